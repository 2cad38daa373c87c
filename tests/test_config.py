"""Pipeline config: defaults ← recipes ← flags, strict validation, stable hash."""

from pathlib import Path

import pytest

from dfprep.config import PipelineConfig, available_recipes, load_config, parse_override, paths, read_yaml
from dfprep.errors import ConfigError


def test_defaults_come_from_the_dataclasses_and_pipelines_yaml_documents_every_one_exactly():
    assert load_config() == PipelineConfig()
    documented = read_yaml(paths.defaults_file())
    assert documented == PipelineConfig().to_dict()  # every section, every key, the same value: no drift


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
    with pytest.raises(ConfigError, match=r"cam.threshold: must be \[0, 1\)"):
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


# ---------------------------------------------------------------- value ranges (issue 11, item 5)

# One case per kind of bound: an int with both ends, a float with an open end, a float whose 0 means "off",
# an optional int, a list of ints, and each value the issue saw "succeed" with useless output.
OUT_OF_RANGE = [
    ("alignment.scale", 0, r"alignment\.scale: must be \[0\.1, 10\], got 0\.0"),
    ("alignment.scale", -1, r"alignment\.scale: must be \[0\.1, 10\], got -1\.0"),
    ("alignment.size", 20000, r"alignment\.size: must be \[16, 2048\], got 20000"),
    ("detection.upsample", -1, r"detection\.upsample: must be \[0, 3\], got -1"),
    ("sampling.video_timeout_s", 0, r"sampling\.video_timeout_s: must be \[1, 86400\], got 0\.0"),
    ("sampling.fps", 0, r"sampling\.fps: must be \(0, 1000\], got 0\.0"),
    ("dataset.val_fraction", 1, r"dataset\.val_fraction: must be \[0, 1\), got 1\.0"),
    ("detection.working_size", 10, r"detection\.working_size: must be 0 \(full size\) or \[64, 16384\], got 10"),
    ("alignment.context_scale", 0.5, r"alignment\.context_scale: must be 0 \(no context crop\) or \[1, 10\]"),
    ("ray.workers", -2, r"ray\.workers: must be \[0, 4096\], got -2"),
    ("dataset.dfdc_val_parts", [1, -1], r"dataset\.dfdc_val_parts: must be \[0, 10000\], got -1"),
    ("sampling.frames", 0, r"sampling\.frames: must be \[1, 10000\], got 0"),
    ("output.quality", 101, r"output\.quality: must be \[1, 100\], got 101"),
    ("ray.actor_restarts", -1, r"ray\.actor_restarts: must be \[0, 100\], got -1"),
]


@pytest.mark.parametrize("key, value, message", OUT_OF_RANGE)
def test_out_of_range_values_are_one_line_errors_naming_key_range_and_value(key, value, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(None, {key: value})
    assert "\n" not in str(raised.value)


def test_nan_is_out_of_every_float_range():
    with pytest.raises(ConfigError, match=r"alignment\.scale: must be .* got nan"):
        load_config(None, {"alignment.scale": float("nan")})


def test_range_edges_and_off_values_are_accepted():
    config = load_config(None, {"alignment.scale": 0.1, "alignment.size": 2048, "detection.working_size": 0,
                                "alignment.context_scale": 0, "detection.upsample": 3, "ray.workers": None,
                                "sampling.video_timeout_s": 1, "dataset.val_fraction": 0})
    assert (config.alignment.size, config.detection.working_size, config.ray.workers) == (2048, 0, None)


def test_every_numeric_key_has_a_range():
    from dfprep.config import RANGES

    numeric = {(section, key) for section, values in PipelineConfig().to_dict().items() for key, value in
               values.items() if isinstance(value, (int, float)) and not isinstance(value, bool)
               or key in ("workers", "dfdc_val_parts")}
    assert numeric <= set(RANGES), sorted(numeric - set(RANGES))


def test_the_cli_refuses_an_out_of_range_value_before_any_work(tmp_path):
    from click.testing import CliRunner

    from dfprep.cli import cli

    result = CliRunner().invoke(cli, ["extract", "folder", str(tmp_path), "-o", str(tmp_path / "out"),
                                      "--set", "alignment.scale=0"])
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    assert result.output.strip() == "dfprep: error: command line: alignment.scale: must be [0.1, 10], got 0.0"


def test_an_out_of_range_value_names_the_recipe_it_came_from(tmp_path):
    with pytest.raises(ConfigError, match=r"^.*mine\.yaml: detection\.upsample: must be \[0, 3\], got 9$"):
        load_config(_recipe(tmp_path, "detection: {upsample: 9}\n"))


# ---------------------------------------------------------------- hostile recipe files (item 11)


def test_a_yaml_alias_bomb_is_refused_quickly_without_expanding_it(tmp_path):
    import time
    import tracemalloc

    levels = ["a: &a [" + ", ".join(['"lol"'] * 9) + "]"]
    for level in range(1, 9):  # 9^9 = 387 million strings once expanded
        previous, name = "a" if level == 1 else f"l{level - 1}", f"l{level}"
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    text = "description:\n" + "".join(f"  {line}\n" for line in levels) + "sampling: {frames: *l8}\n"
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError, match=r"mine\.yaml: more than 10000 YAML values once aliases are expanded"):
            load_config(_recipe(tmp_path, text))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6 and time.monotonic() - started < 30


@pytest.mark.parametrize("text, message", [
    ("sampling: &s {frames: [*s]}\n", "more than 10000 YAML values"),  # a recursive alias
    ("description: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_recursive_and_deeply_nested_yaml_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_recipe(tmp_path, text))


def test_a_recipe_over_one_megabyte_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("description: '" + "x" * 1_100_000 + "'\n")
    with pytest.raises(ConfigError, match=r"huge\.yaml: larger than 1 MB"):
        load_config(str(path))


def test_error_messages_show_a_bounded_repr_of_a_huge_value(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(None, {"sampling.frames": list(range(100_000))})
    assert len(str(raised.value)) < 200


def _documented_comments() -> dict[str, str]:
    """pipelines.yaml's comment on each section.key line."""
    comments, section = {}, ""
    for line in paths.defaults_file().read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            section = line.split(":", 1)[0]
        elif line.startswith("  ") and not line.lstrip().startswith("#") and ":" in line:
            key = line.split(":", 1)[0].strip()
            comments[f"{section}.{key}"] = line.partition("#")[2]
    return comments


def test_enumerated_keys_are_literals_documented_and_checked_naming_the_file(tmp_path):
    import typing

    comments = _documented_comments()
    literal_keys = []
    for section, section_type in typing.get_type_hints(PipelineConfig).items():
        for key, annotation in typing.get_type_hints(section_type).items():
            if typing.get_origin(annotation) is typing.Literal:
                literal_keys.append(f"{section}.{key}")
                assert all(choice in comments[f"{section}.{key}"] for choice in typing.get_args(annotation)), key
    assert {"sampling.mode", "detection.detector", "detection.select", "alignment.preset", "output.image_format",
            "dataset.dfd_split", "dataset.default_split", "cam.target", "cam.fusion"} <= set(literal_keys)
    with pytest.raises(ConfigError, match=r"mine\.yaml: sampling\.mode: expected one of uniform, stride, fps, all, "
                                          r"keyframes, got 'sometimes'"):
        load_config(_recipe(tmp_path, "sampling: {mode: sometimes}\n"))
    with pytest.raises(ConfigError, match="command line: output.image_format: expected one of jpg, png, webp"):
        load_config(None, {"output.image_format": 1})


def test_datasetconfig_is_the_union_of_the_adapters_options_with_their_defaults():
    import dataclasses

    from dfprep.catalog import ADAPTERS
    from dfprep.config import ADAPTER_OPTIONS, COMMON_DATASET_KEYS, DatasetConfig

    assert set(ADAPTER_OPTIONS) == set(ADAPTERS)
    owned = [f for options in ADAPTER_OPTIONS.values() for f in dataclasses.fields(options)]
    assert len({f.name for f in owned}) == len(owned)  # each adapter key belongs to exactly one adapter
    flat = {f.name: f for f in dataclasses.fields(DatasetConfig)}
    assert set(flat) == set(COMMON_DATASET_KEYS) | {f.name for f in owned}
    for own in owned:
        assert flat[own.name].type == own.type
        assert DatasetConfig().__getattribute__(own.name) == (
            own.default if own.default is not dataclasses.MISSING else own.default_factory())


@pytest.mark.parametrize("recipe, key, value, adapter", [
    ("folder", "dataset.val_fraction", 0.2, "folder"),  # documented for folder once, never read: refused
    ("ffpp", "dataset.ffpp_root", "/data/ffpp", "ffpp"),
    ("celebdf", "dataset.default_split", "test", "celebdf"),
    ("dfdcp", "dataset.seed", 3, "dfdcp"),
])
def test_a_key_of_another_adapter_is_a_one_line_error(recipe, key, value, adapter):
    with pytest.raises(ConfigError) as error:
        load_config(recipe, {key: value})
    message = str(error.value)
    assert message.startswith(f"command line: {key} is not an option of the {adapter} adapter (its options: ")
    assert "\n" not in message and "every adapter: name, root, compressions, methods" in message


def test_an_adapter_key_in_a_recipe_is_refused_naming_the_recipe(tmp_path):
    with pytest.raises(ConfigError, match=r"mine\.yaml: dataset\.val_fraction is not an option of the folder adapter "
                                          r"\(its options: default_split;"):
        load_config(_recipe(tmp_path, "extends: folder\ndataset: {val_fraction: 0.3}\n"))
    assert load_config("celebdf", {"dataset.val_fraction": 0.3, "dataset.seed": 4}).dataset.val_fraction == 0.3
    assert load_config("ffpp", {"dataset.compressions": ["c40"]}).dataset.compressions == ("c40",)  # common key


def test_the_catalog_hands_each_adapter_only_its_options_and_refuses_foreign_ones(tmp_path):
    from dfprep.catalog import scan
    from dfprep.config import DatasetConfig, FolderOptions, dataset_options

    assert dataset_options(DatasetConfig(name="folder", default_split="val")) == FolderOptions(default_split="val")
    (tmp_path / "real").mkdir()
    with pytest.raises(ConfigError, match="dataset.val_fraction is not an option of the folder adapter"):
        list(scan("folder", tmp_path, DatasetConfig(val_fraction=0.5)))


def test_the_cli_refuses_a_key_of_another_adapter_in_one_line(tmp_path):
    from click.testing import CliRunner

    from dfprep.cli import cli

    (tmp_path / "real").mkdir()
    result = CliRunner().invoke(cli, ["extract", "folder", str(tmp_path), "-o", str(tmp_path / "out"),
                                      "--set", "dataset.val_fraction=0.2"])
    assert result.exit_code == 2
    assert "dataset.val_fraction is not an option of the folder adapter" in result.output
    assert not (tmp_path / "out").exists()


def test_pipelines_yaml_states_every_key_s_range_as_the_loader_enforces_it():
    from dfprep.config import RANGES

    comments = _documented_comments()
    for (section, key), allowed in RANGES.items():
        assert allowed.describe() in comments[f"{section}.{key}"], (section, key, allowed.describe())
