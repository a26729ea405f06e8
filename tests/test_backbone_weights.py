"""The 2D StyleGAN2 backbone (model stylegan2), exported weights files, and GMPI / GMNR runs that
start from them (gmpi.pretrained), including the weights bundled for the demo."""
import pytest
import torch

from gmnr.config import PROJECT_ROOT, load_params
from gmnr.data.download import ChecksumError, download_weights, resolve_weights
from gmnr.data.registry import RemoteFile, WeightsEntry, get_weights
from gmnr.models.backbone import StyleGAN2Backbone
from gmnr.models.factory import build_discriminator, build_generator
from gmnr.models.gmpi import GMPIConfig, GMPIGenerator
from gmnr.models.pretrained import export_weights, init_from_pretrained, pretrained_states
from gmnr.models.stylegan2 import Discriminator
from gmnr.render.camera import pose_to_cam2world
from tests.conftest import env_with_venv, make_disc_dataset, run_cli

TINY = dict(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=32,
            planes_train=4, planes_eval=4)
TINY_S = ["-S", "gmpi.z_dim=16", "-S", "gmpi.w_dim=16", "-S", "gmpi.mapping_layers=2", "-S", "gmpi.channel_base=256",
          "-S", "gmpi.channel_max=32", "-S", "gmpi.planes_train=4", "-S", "gmpi.planes_eval=4",
          "-S", "gmpi.pretrained=null", "-S", "train.grid_latents=2", "-S", "train.grid_views=2",
          "-S", "train.views_per_latent=2", "-S", "train.r1_interval=2", "-S", "pack.resolution=16"]


def _saved_backbone(tmp_path, seed=0):
    """A 2D backbone and an unconditional D with non-default weights, saved as a final.pt would be."""
    torch.manual_seed(seed)
    G = StyleGAN2Backbone(GMPIConfig(**TINY))
    D = Discriminator(c_dim=0, img_resolution=16, channel_base=256, channel_max=32)
    with torch.no_grad():
        for p in list(G.parameters()) + list(D.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "final.pt"
    torch.save({"G_ema": G.state_dict(), "D": D.state_dict(), "config": {}, "model": "stylegan2", "step": 7}, path)
    return G, D, path


def test_backbone_renders_the_same_image_for_every_view():
    torch.manual_seed(0)
    G = StyleGAN2Backbone(GMPIConfig(**TINY))
    ws = G.mapping(torch.randn(2, 16), None)
    out = G.render(ws, torch.eye(4).repeat(6, 1, 1))
    assert out["image"].shape == (6, 3, 16, 16)
    assert torch.equal(out["image"][0], out["image"][2]) and not torch.equal(out["image"][0], out["image"][3])
    assert set(GMPIGenerator(GMPIConfig(**TINY)).state_dict()) > set(G.state_dict()), \
        "GMPI is the backbone plus the alpha branch: every backbone name exists in GMPI"


@pytest.mark.parametrize("dtype, tol", [("float32", 0.0), ("float16", 2e-3)])
def test_exported_weights_initialise_gmpi_backbone_and_discriminator(tmp_path, dtype, tol):
    G2d, D2d, final = _saved_backbone(tmp_path)
    info = export_weights(final, tmp_path / "w.pt", dtype)
    assert info["size_bytes"] == (tmp_path / "w.pt").stat().st_size and info["step"] == 7
    torch.manual_seed(1)
    G, D = GMPIGenerator(GMPIConfig(**TINY)), Discriminator(c_dim=16, img_resolution=16, channel_base=256,
                                                            channel_max=32)
    alpha_before = {k: v.clone() for k, v in G.state_dict().items() if k.startswith("alpha_layers.")}
    label_before = {k: v.clone() for k, v in D.state_dict().items() if k.startswith("mapping.")}
    report = init_from_pretrained(G, D, tmp_path / "w.pt")
    g_state, d_state = G.state_dict(), D.state_dict()
    for name, value in G2d.state_dict().items():
        assert torch.allclose(g_state[name], value, rtol=tol, atol=tol), name
    for name, value in alpha_before.items():
        assert torch.equal(g_state[name], value), f"{name} has no 2D counterpart and must keep its init"
    assert set(report["G"].missing) == set(alpha_before)
    for name, value in label_before.items():
        assert torch.equal(d_state[name], value)
    loaded_d = set(report["D"].loaded)
    assert loaded_d and all(torch.allclose(d_state[k], D2d.state_dict()[k], rtol=tol, atol=tol) for k in loaded_d)
    # the unconditional D's single logit row fills every row of the projection head, as GMPI's
    # broadcasting copy_ does, and with the neutral label projection the conditioned D starts as the
    # pretrained D: the same logits for any camera
    assert not report["D"].mismatched and {"b4.out.weight", "b4.out.bias"} <= loaded_d
    row = D2d.state_dict()["b4.out.weight"]
    assert torch.allclose(d_state["b4.out.weight"], row.expand(D.cmap_dim, -1), rtol=tol, atol=tol)
    images = torch.randn(4, 3, 16, 16)
    cams = pose_to_cam2world(torch.tensor([0.4, -0.3, 0.0, 0.2]), torch.tensor([0.1, -0.2, 0.0, 0.25]))
    labels = torch.linalg.inv(cams).reshape(4, 16)
    with torch.no_grad():
        pretrained = D2d.eval()(images, None)
        for label in (labels, torch.randn(4, 16) * 3):
            assert torch.allclose(D.eval()(images, label), pretrained, rtol=2e-2 if tol else 1e-5, atol=2e-2 if tol else 1e-5)


def test_weights_of_another_architecture_are_refused_before_anything_is_copied(tmp_path):
    _, _, final = _saved_backbone(tmp_path)
    torch.manual_seed(0)
    G = GMPIGenerator(GMPIConfig(**{**TINY, "channel_max": 16}))
    before = {k: v.clone() for k, v in G.state_dict().items()}
    expected = r"another architecture.*synthesis\.b4\.const: \[32, 4, 4\] in the file, \[16, 4, 4\] here"
    with pytest.raises(ValueError, match=expected):
        init_from_pretrained(G, None, final)
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())


def test_weights_files_without_generator_or_discriminator_are_explained(tmp_path):
    torch.save({"G": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no 'G_ema' weights"):
        pretrained_states(tmp_path / "bad.pt")
    _, _, final = _saved_backbone(tmp_path)
    state = torch.load(final)
    del state["D"]
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="needs 'G_ema' and 'D'"):
        export_weights(tmp_path / "old.pt", tmp_path / "w.pt")
    G = GMPIGenerator(GMPIConfig(**TINY))
    assert "starts from scratch" in init_from_pretrained(G, Discriminator(16, 16, channel_base=256, channel_max=32),
                                                         tmp_path / "old.pt")["D"]
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_weights(str(tmp_path / "missing.pt"), tmp_path)


def test_bundled_weights_are_verified_before_use(tmp_path, monkeypatch):
    import gmnr.config
    payload = b"weights" * 100
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.pt").write_bytes(payload)
    import hashlib
    entry = WeightsEntry(name="t", description="t", resolution=16, dataset="demo", licence="t", bundled="weights/w.pt",
                         file=RemoteFile("w.pt", size_bytes=len(payload),
                                         checksum="sha256:" + hashlib.sha256(payload).hexdigest()))
    monkeypatch.setattr(gmnr.config, "PROJECT_ROOT", tmp_path)
    assert download_weights(entry, tmp_path / "dl") == tmp_path / "weights" / "w.pt"
    assert not (tmp_path / "dl").exists(), "a bundled file is used in place, never copied or downloaded"
    (tmp_path / "weights" / "w.pt").write_bytes(payload[:-1] + b"X")
    with pytest.raises(ChecksumError, match="sha256"):
        download_weights(entry, tmp_path / "dl")
    (tmp_path / "weights" / "w.pt").unlink()
    with pytest.raises(FileNotFoundError, match="git checkout"):
        download_weights(entry, tmp_path / "dl")
    with pytest.raises(ValueError, match="bundled file needs"):
        WeightsEntry(name="t", description="t", resolution=16, dataset="demo", licence="t", bundled="../w.pt",
                     file=RemoteFile("w.pt", size_bytes=1, checksum="sha256:" + "0" * 64))


def test_the_bundled_demo_backbone_fits_the_demo_gmpi_and_gmnr():
    """The demo's params and the shipped file must agree: every backbone tensor loads, shape for
    shape, into the demo GMPI and GMNR; only the alpha branch (and alpha-VdR) stay new."""
    entry = get_weights("demo64")
    path = download_weights(entry, PROJECT_ROOT / "data" / "downloads")  # verifies size and checksum
    assert path == PROJECT_ROOT / entry.bundled
    for model in ("gmpi", "gmnr"):
        params = load_params(overrides=[f"model={model}"])
        assert params.gmpi.pretrained == "demo64" and params.training_resolution() == entry.resolution
        G, D = build_generator(params), build_discriminator(params)
        report = init_from_pretrained(G, D, path)
        assert not report["G"].mismatched and not report["G"].unexpected
        assert all(k.startswith(("alpha_layers.", "vdr.")) for k in report["G"].missing)
        new_in_d = {k for k in D.state_dict() if k.startswith("mapping.")}  # the camera's label projection
        assert set(report["D"].loaded) == set(D.state_dict()) - new_in_d


def _env(root):
    return env_with_venv(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """2 steps of the 2D backbone, exported, then 2 steps of GMPI starting from it."""
    root = tmp_path_factory.mktemp("backbone")
    make_disc_dataset(root, 12)
    env = _env(root)
    common = ["--no-progress", "--input", str(root / "packed"), *TINY_S, "-S", "train.steps=2",
              "-S", "train.checkpoint_every=2", "-S", "train.threads=2"]
    done = run_cli("train", "--output", str(root / "sg"), "-S", "model=stylegan2", *common, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_cli("export-weights", "--checkpoint", str(root / "sg" / "final.pt"), "--output", str(root / "w.pt"),
                   *TINY_S, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_cli("train", "--output", str(root / "gmpi"), "-S", "model=gmpi", *common,
                   "-S", f"gmpi.pretrained={root / 'w.pt'}", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return root


def test_backbone_trains_and_evaluates_fid_kid_speed_only(pretrained_run):
    root = pretrained_run
    done = run_cli("evaluate", "-S", "model=stylegan2", *TINY_S, "--checkpoint", str(root / "sg" / "final.pt"),
                   "--input", str(root / "packed"), "--output", str(root / "sg.json"), "-S", "evaluate.fid_images=8",
                   "-S", "evaluate.kid_subsets=4", "-S", "evaluate.speed_frames=2", "-S", "evaluate.speed_warmup=1",
                   "-S", "evaluate.with_init=false", env=_env(root))
    assert done.returncode == 0, done.stderr[-2000:]
    import json
    report = json.loads((root / "sg.json").read_text())
    assert report["metrics"]["fid"] > 0 and report["metrics"]["fps"] > 0
    assert set(report["backends"]) == {"fid", "kid", "fps"}
    done = run_cli("render", "-S", "model=stylegan2", *TINY_S, "--checkpoint", str(root / "sg" / "final.pt"),
                   "--output", str(root / "render"), env=_env(root))
    assert done.returncode == 2 and "no viewpoint" in done.stderr


def test_baselines_are_the_untrained_and_the_pretrained_start_of_the_run(pretrained_run):
    """A run that started from weights has two baselines: its architecture untrained (`--init`) and
    those weights on the seeded alpha branch (`--pretrained`), exactly as the trainer started."""
    from gmnr.eval.evaluate import _load, baselines_of
    root = pretrained_run
    final = root / "gmpi" / "final.pt"
    assert baselines_of(final) == ["init", "pretrained"] and baselines_of(root / "sg" / "final.pt") == ["init"]
    params = load_params(overrides=["model=gmpi", *[s for s in TINY_S if s != "-S"]])
    G_start, trained, _, weights = _load(params, final, "pretrained", torch.device("cpu"))
    assert weights == f"untrained (seed 0) + pretrained {root / 'w.pt'}"
    G_untrained, _, _, weights = _load(params, final, "init", torch.device("cpu"))
    assert weights == "untrained (seed 0)"
    exported = pretrained_states(root / "w.pt")["G_ema"]
    start, untrained = G_start.state_dict(), G_untrained.state_dict()
    assert all(torch.allclose(start[k], v.float(), atol=2e-3) for k, v in exported.items())
    assert not torch.equal(start["synthesis.b4.const"], untrained["synthesis.b4.const"])
    # the trainer's first checkpoint-free state: its seeded alpha branch, the file's backbone
    assert all(torch.equal(start[k], v) for k, v in untrained.items() if k.startswith("alpha_layers."))
    with pytest.raises(ValueError, match="no 'pretrained' baseline"):
        _load(params, root / "sg" / "final.pt", "pretrained", torch.device("cpu"))
