"""Pipeline config: defaults ← recipes ← flags, strict validation, stable hash."""

from pathlib import Path

import pytest

from dfprep.config import PipelineConfig, available_recipes, load_config, parse_override
from dfprep.errors import ConfigError


def test_defaults_file_matches_dataclass_defaults():
    assert load_config() == PipelineConfig()


@pytest.mark.parametrize("recipe", ["ffpp", "celebdf", "dfdc", "dfdcp", "deeperforensics", "folder",
                                    "deepfakebench", "caddm", "prle", "caddm-ffpp", "prle-ffpp", "prle-landmarks",
                                    "prle-landmarks-ffpp"])
def test_every_named_recipe_loads(recipe):
    assert recipe in available_recipes()
    load_config(recipe)


def test_paper_protocols():
    dfb = load_config("deepfakebench")
    assert (dfb.sampling.frames, dfb.detection.select, dfb.alignment.preset, dfb.alignment.size,
            dfb.alignment.scale) == (32, "largest", "deepfakebench", 256, 1.3)
    caddm = load_config("caddm")
    assert (caddm.alignment.preset, caddm.alignment.size, caddm.alignment.scale) == ("caddm", 224, 0.9)
    assert caddm.alignment.context_scale > 1
    prle = load_config("prle")
    assert prle.alignment == dfb.alignment and prle.output.maps == ("cam",)
    assert (prle.cam.target, prle.cam.fusion, prle.cam.threshold, prle.cam.released_halving, prle.cam.zoo) == (
        "predicted", "mean", 0.3, False, ())
    landmarks = load_config("prle-landmarks")
    assert landmarks.alignment == dfb.alignment and landmarks.output.maps == ("landmarks",)
    assert load_config("prle-ffpp").output.maps == ("cam",) and load_config("prle-ffpp").dataset.name == "ffpp"
    assert load_config("prle-landmarks-ffpp").output.maps == ("landmarks",)


def test_cam_settings_do_not_change_the_output_hash_and_are_checked():
    base = load_config("prle")
    with_zoo = load_config("prle", {"cam.zoo": ["a.pt", "b.pt"], "cam.released_halving": True})
    assert with_zoo.cam.zoo == ("a.pt", "b.pt") and with_zoo.output_hash() == base.output_hash()
    assert load_config("prle-landmarks").output_hash() != base.output_hash()  # maps: [landmarks] vs [cam]
    with pytest.raises(ConfigError, match="cam.target: expected one of predicted, label, fake"):
        load_config("prle", {"cam.target": "real"})
    with pytest.raises(ConfigError, match=r"cam.threshold: must be in \[0, 1\)"):
        load_config("prle", {"cam.threshold": 1.5})
    with pytest.raises(ConfigError, match="output.maps: unknown inline map method 'gradcam'"):
        load_config(None, {"output.maps": ["gradcam"]})


def test_recipes_compose_and_flags_win():
    config = load_config("caddm-ffpp", {"sampling.frames": 8})
    assert config.dataset.name == "ffpp" and config.dataset.compressions == ("c23",)
    assert config.alignment.preset == "caddm" and config.sampling.frames == 8


def _recipe(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return str(path)


def test_unknown_key_names_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown key 'sampling\.frame'"):
        load_config(_recipe(tmp_path, "sampling: {frame: 3}\n"))


def test_wrong_type_names_file_key_and_type(tmp_path):
    with pytest.raises(ConfigError, match=r"mine\.yaml: sampling\.frames: expected int, got str 'many'"):
        load_config(_recipe(tmp_path, "sampling: {frames: many}\n"))
    with pytest.raises(ConfigError, match="expected list of str"):
        load_config(_recipe(tmp_path, "dataset: {compressions: 23}\n"))


def test_unknown_section_and_bad_choice(tmp_path):
    with pytest.raises(ConfigError, match="unknown section 'sampler'"):
        load_config(_recipe(tmp_path, "sampler: {}\n"))
    with pytest.raises(ConfigError, match="alignment.preset: expected one of"):
        load_config(_recipe(tmp_path, "alignment: {preset: warp}\n"))


def test_flag_type_error_names_command_line():
    with pytest.raises(ConfigError, match="command line: sampling.frames: expected int"):
        load_config(None, {"sampling.frames": "x"})


def test_yaml_python_tags_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_recipe(tmp_path, "sampling: !!python/object/apply:os.system ['true']\n"))


def test_extends_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))


def test_hash_is_stable_and_ignores_execution_settings():
    a = load_config("deepfakebench")
    assert a.output_hash() == load_config("deepfakebench").output_hash()
    assert a.output_hash() == load_config("deepfakebench", {"ray.workers": 7}).output_hash()
    assert a.output_hash() != load_config("deepfakebench", {"sampling.frames": 16}).output_hash()
    hash(a)  # frozen dataclasses of tuples: usable as a dict key


def test_parse_override():
    assert parse_override("sampling.frames=16") == ("sampling.frames", 16)
    assert parse_override("dataset.compressions=[c23, c40]") == ("dataset.compressions", ["c23", "c40"])
    with pytest.raises(ConfigError):
        parse_override("frames=16")


def test_one_line_never_fails_on_empty_messages():
    from dfprep.errors import one_line

    assert one_line(RuntimeError("")) == "RuntimeError"
    assert one_line(OSError(""), fallback="unreadable") == "unreadable"
    assert one_line(ValueError("first\nsecond")) == "first"
    assert one_line(ValueError("x" * 500), 160) == "x" * 160
