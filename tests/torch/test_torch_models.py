"""Reference detectors: one fake logit per image at any size; the registry also takes import paths."""

import pytest

torch = pytest.importorskip("torch")

from dfprep.torch.models import MODELS, ModelBuildError, build_model, fake_logit  # noqa: E402


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_gives_one_logit_per_image(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 48)).shape == (2,)


def test_models_differ_in_size_as_their_names_say():
    sizes = {name: sum(p.numel() for p in build_model(name).parameters()) for name in MODELS}
    assert sizes["tiny_cnn"] < sizes["efficientnet_small"] < sizes["resnet18"] < sizes["resnet34"]
    assert 11e6 < sizes["resnet18"] < 12e6 and 21e6 < sizes["resnet34"] < 22e6


def test_import_paths_and_their_errors():
    assert isinstance(build_model("dfprep.torch.models:tiny_cnn"), torch.nn.Module)
    assert isinstance(build_model("torch.nn:Identity"), torch.nn.Identity)
    with pytest.raises(ModelBuildError, match="not a torch.nn.Module"):
        build_model("collections:OrderedDict")
    with pytest.raises(ModelBuildError, match="cannot import"):
        build_model("no_such_package.anywhere:factory")
    with pytest.raises(ModelBuildError, match="unknown model 'resnet9000'"):
        build_model("resnet9000")


def test_fake_logit_accepts_one_or_two_logit_heads():
    assert fake_logit(torch.tensor([[0.5], [-1.0]])).tolist() == [0.5, -1.0]
    assert fake_logit(torch.tensor([[1.0, 3.0], [2.0, 0.0]])).tolist() == [2.0, -2.0]  # log-odds of class 1
    with pytest.raises(ModelBuildError):
        fake_logit(torch.zeros(2, 3))
