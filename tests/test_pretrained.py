"""Safe loading of NVlabs-format `.pkl` checkpoints (gmnr.models.pretrained).

The fixtures write pickles in the real stylegan2-ada-pytorch persistence layout: a fake
`torch_utils.persistence` module whose `_reconstruct_persistent_obj` behaves like the NVlabs one
(it exec's `module_src`), networks reduced to `(_reconstruct_persistent_obj, (meta,))`, and
`dnnlib.util.EasyDict` / numpy scalars in the state, as in genuine checkpoints.
"""
import builtins
import json
import logging
import os
import pickle
import pickletools
import shlex
import subprocess
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch

from gmnr.models.pretrained import (PersistentObject, UnsafePickleError, init_generator_from_pkl, load_into,
                                    load_network_state, safe_load_pickle)
from gmnr.models.stylegan2 import Discriminator, Generator

SYN = dict(channel_base=128, channel_max=16)


def make_generator(res=16, w_dim=8, seed=0):
    torch.manual_seed(seed)
    G = Generator(z_dim=w_dim, c_dim=0, w_dim=w_dim, img_resolution=res, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), synthesis_kwargs=SYN)
    with torch.no_grad():  # Non-default values everywhere so that a skipped copy would show.
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3 + 0.01 * seed)
        G.mapping.w_avg.copy_(torch.randn(w_dim))
    return G.eval()


@pytest.fixture
def nvlabs_modules(monkeypatch):
    """Fake `torch_utils.persistence` and `dnnlib.util` modules with the NVlabs behaviour."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # What NVlabs does: run the source stored in the file.
        exec(meta["module_src"], {})
        raise RuntimeError("the genuine reconstruct function was called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    dnnlib_util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    dnnlib_util.EasyDict = EasyDict

    for name, mod in [("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                      ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", dnnlib_util)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)


class Persistent:
    """Pickles exactly like an NVlabs @persistent_class instance."""

    def __init__(self, reconstruct, meta):
        self.reconstruct, self.meta = reconstruct, meta

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def as_persistent(module, fake, module_src, init_kwargs=None):
    state = {
        "training": False,
        "_parameters": OrderedDict(module._parameters),
        "_buffers": OrderedDict(module._buffers),
        "_non_persistent_buffers_set": set(),
        "_forward_hooks": OrderedDict(),
        "_modules": OrderedDict((k, as_persistent(m, fake, module_src)) for k, m in module._modules.items()),
        "_init_kwargs": fake.EasyDict(init_kwargs or {}),
    }
    if hasattr(module, "weight_gain"):
        state["weight_gain"] = np.float64(module.weight_gain)  # NVlabs stores gains as numpy scalars
    meta = dict(type="class", version=4, module_src=module_src, class_name=type(module).__name__, state=state)
    return Persistent(fake.reconstruct, meta)


def write_nvlabs_pkl(path, fake, sentinel, G, D=None):
    src = f"import os; os.system({'touch ' + shlex.quote(str(sentinel))!r})"
    data = {
        "G": as_persistent(G, fake, src, {"w_dim": G.w_dim}),
        "D": as_persistent(D, fake, src) if D is not None else None,
        "G_ema": as_persistent(G, fake, src, {"mapping_kwargs": fake.EasyDict(num_layers=2)}),
        "training_set_kwargs": fake.EasyDict(resolution=G.img_resolution, path="ffhq.zip"),
        "augment_pipe": None,
    }
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def test_module_src_is_really_executed_by_plain_pickle(tmp_path, nvlabs_modules):
    """Control: the fixture is dangerous with the stock unpickler, so the other tests mean something."""
    sentinel = tmp_path / "pwned"
    pkl = write_nvlabs_pkl(tmp_path / "net.pkl", nvlabs_modules, sentinel, make_generator())
    with pytest.raises(RuntimeError, match="genuine reconstruct"):
        with open(pkl, "rb") as f:
            pickle.load(f)
    assert sentinel.exists()


def test_roundtrip_gives_identical_outputs_without_running_module_src(tmp_path, nvlabs_modules):
    sentinel = tmp_path / "pwned"
    G_src = make_generator(seed=0)
    D_src = Discriminator(c_dim=0, img_resolution=16, img_channels=3, **SYN)  # NVlabs FFHQ D: unconditional
    pkl = write_nvlabs_pkl(tmp_path / "net.pkl", nvlabs_modules, sentinel, G_src, D_src)

    data = safe_load_pickle(pkl)
    assert isinstance(data["G_ema"], PersistentObject) and data["G_ema"].class_name == "Generator"
    assert data["training_set_kwargs"].resolution == 16
    assert isinstance(data["G_ema"].modules["mapping"].modules["fc0"].state["weight_gain"], np.floating)

    G = make_generator(seed=1)
    z = torch.randn(3, 8)
    with torch.no_grad():
        assert not torch.allclose(G(z, None), G_src(z, None))
        report = init_generator_from_pkl(G, pkl)
        assert report.ok and len(report.loaded) == len(G.state_dict())
        for kwargs in ({}, {"truncation_psi": 0.6, "truncation_cutoff": 3}):
            assert torch.equal(G(z, None, noise_mode="const", **kwargs), G_src(z, None, noise_mode="const", **kwargs))

    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, **SYN)
    assert load_into(D, load_network_state(pkl, key="D")).ok
    img = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(D(img, None), D_src(img, None))
    assert not sentinel.exists()


def test_config_mismatch_is_reported(tmp_path, nvlabs_modules, caplog):
    pkl16 = write_nvlabs_pkl(tmp_path / "g16.pkl", nvlabs_modules, tmp_path / "s", make_generator(res=16))
    pkl32 = write_nvlabs_pkl(tmp_path / "g32.pkl", nvlabs_modules, tmp_path / "s", make_generator(res=32))

    with caplog.at_level(logging.WARNING, logger="gmnr.models.pretrained"):
        report = init_generator_from_pkl(make_generator(res=32, seed=2), pkl16)  # model has one extra block
    assert not report.ok and not report.unexpected and not report.mismatched
    assert report.missing and all(k.startswith("synthesis.b32.") for k in report.missing)
    assert "synthesis.b32.conv0.weight" in report.missing
    assert "missing in checkpoint" in caplog.text

    report = init_generator_from_pkl(make_generator(res=16, seed=2), pkl32)  # checkpoint has one extra block
    assert not report.missing and "synthesis.b32.torgb.affine.bias" in report.unexpected
    assert json.loads(json.dumps(report))["unexpected"] == report.unexpected  # loggable as an artefact

    wide = Generator(z_dim=8, c_dim=0, w_dim=12, img_resolution=16, img_channels=3,
                     mapping_kwargs=dict(num_layers=2), synthesis_kwargs=SYN)
    before = wide.mapping.fc1.weight.clone()
    with pytest.raises(ValueError, match="shape mismatch"):
        init_generator_from_pkl(wide, pkl16, strict=True)
    assert torch.equal(wide.mapping.fc1.weight, before)  # strict failure copies nothing
    report = init_generator_from_pkl(wide, pkl16)
    assert ("mapping.fc1.weight", (8, 8), (12, 12)) in report.mismatched
    assert torch.equal(wide.mapping.fc1.weight, before)


def test_prefix_map_targets_an_embedded_generator(tmp_path, nvlabs_modules):
    pkl = write_nvlabs_pkl(tmp_path / "g.pkl", nvlabs_modules, tmp_path / "s", make_generator())
    wrapper = torch.nn.Module()
    wrapper.backbone = make_generator(seed=3)
    report = load_into(wrapper, load_network_state(pkl), prefix_map={"": "backbone."})
    assert report.ok and "backbone.synthesis.b16.conv1.weight" in report.loaded


class _Evil:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("make", [
    lambda s: _Evil(os.system, (f"touch {shlex.quote(str(s))}",)),
    lambda s: _Evil(builtins.eval, (f"open({str(s)!r}, 'w').close()",)),
    lambda s: _Evil(subprocess.Popen, (["touch", str(s)],)),
], ids=["os.system", "builtins.eval", "subprocess.Popen"])
def test_malicious_pickles_are_refused(tmp_path, nvlabs_modules, make):
    sentinel = tmp_path / "pwned"
    evil = make(sentinel)
    name = evil.func.__name__
    module = evil.func.__module__  # os.system pickles as 'posix.system'
    top_level = tmp_path / "top.pkl"
    top_level.write_bytes(pickle.dumps({"G_ema": evil}))
    with pytest.raises(UnsafePickleError, match=rf"{module}\.{name}"):
        load_network_state(top_level)

    # The same payload hidden inside a network's state in the persistence layout.
    nested = tmp_path / "nested.pkl"
    data = {"G_ema": as_persistent(make_generator(), nvlabs_modules, "pass")}
    data["G_ema"].meta["state"]["_init_kwargs"] = evil
    nested.write_bytes(pickle.dumps(data))
    with pytest.raises(UnsafePickleError, match=rf"refusing global '{module}\.{name}'"):
        load_network_state(nested)
    assert not sentinel.exists()


class NotAllowed:
    pass


def test_unknown_class_is_refused(tmp_path):
    path = tmp_path / "unknown.pkl"
    path.write_bytes(pickle.dumps({"G_ema": NotAllowed()}))
    with pytest.raises(UnsafePickleError, match=r"test_pretrained\.NotAllowed|tests\.test_pretrained\.NotAllowed"):
        safe_load_pickle(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_all_pickle_protocols_of_plain_data(tmp_path, protocol):
    data = {"p": torch.nn.Parameter(torch.randn(2, 3)), "set": {1, 2}, "np": np.float32(0.25),
            "arr": np.arange(6.0).reshape(2, 3), "bytes": b"xyz", "od": OrderedDict(a=1)}
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    out = safe_load_pickle(path)
    assert isinstance(out["p"], torch.nn.Parameter) and torch.equal(out["p"], data["p"])
    assert out["set"] == {1, 2} and out["np"] == np.float32(0.25) and out["bytes"] == b"xyz"
    np.testing.assert_array_equal(out["arr"], data["arr"])
    assert out["od"] == OrderedDict(a=1)


def test_storages_saved_on_gpu_load_on_cpu(tmp_path):
    """Tensors pickled from CUDA carry a `torch.cuda.FloatStorage` at 'cuda:0' inside the storage
    blob; they must load on a CPU-only machine."""
    t = torch.arange(6.0).reshape(2, 3)
    raw = pickle.dumps({"t": t}, protocol=3)
    op, blob, pos = next(o for o in pickletools.genops(raw) if o[0].name in ("BINBYTES", "SHORT_BINBYTES"))
    header = 5 if op.name == "BINBYTES" else 2
    gpu_blob = blob.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n")
    gpu_blob = gpu_blob.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    assert b"torch.cuda" in gpu_blob and b"cuda:0" in gpu_blob
    patched = raw[:pos] + b"B" + len(gpu_blob).to_bytes(4, "little") + gpu_blob + raw[pos + header + len(blob):]
    path = tmp_path / "gpu.pkl"
    path.write_bytes(patched)
    out = safe_load_pickle(path)["t"]
    assert out.device.type == "cpu" and torch.equal(out, t)


def test_the_architecture_follows_the_pickles_own_init_kwargs(tmp_path, nvlabs_modules):
    """An NVlabs pickle keeps its networks' constructor kwargs: with gmpi's architecture keys null,
    GMPI is built as the file's network (as FFHQ-256's paper256 config, channel_base 16384, is), every
    backbone tensor loads; a key set against the file is refused naming it, before anything loads."""
    from gmnr.config import ParamsError, load_params
    from gmnr.models.factory import build_discriminator, build_generator, resolve_architecture
    from gmnr.models.pretrained import architecture_of, init_from_pretrained
    torch.manual_seed(0)
    G_src = Generator(z_dim=8, c_dim=0, w_dim=12, img_resolution=16, img_channels=3,
                      mapping_kwargs=dict(num_layers=3), synthesis_kwargs=dict(channel_base=96, channel_max=24))
    D_src = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=96, channel_max=24)
    kwargs = {"z_dim": 8, "c_dim": 0, "w_dim": 12, "img_resolution": 16, "img_channels": 3,
              "mapping_kwargs": nvlabs_modules.EasyDict(num_layers=3),
              "synthesis_kwargs": nvlabs_modules.EasyDict(channel_base=96, channel_max=24, num_fp16_res=4,
                                                          conv_clamp=256)}
    src = "raise SystemExit('module_src must not run')"
    pkl = tmp_path / "net.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"G_ema": as_persistent(G_src, nvlabs_modules, src, kwargs),
                     "D": as_persistent(D_src, nvlabs_modules, src)}, f)
    assert architecture_of(pkl) == {"z_dim": 8, "w_dim": 12, "mapping_layers": 3, "channel_base": 96,
                                    "channel_max": 24, "conv_clamp": 256}
    base = ["dataset=ffhq256", "model=gmpi", "pack.resolution=16", f"gmpi.pretrained={pkl}", "gmpi.planes_train=4"]
    params = load_params(overrides=base)
    assert params.gmpi.channel_base is None
    with pytest.raises(ValueError, match="has not been resolved"):
        build_generator(params)
    resolved = resolve_architecture(params)
    assert (resolved.gmpi.z_dim, resolved.gmpi.channel_base, resolved.gmpi.conv_clamp) == (8, 96, 256)
    G, D = build_generator(resolved), build_discriminator(resolved)
    report = init_from_pretrained(G, D, pkl)
    assert not report["G"].mismatched and all(k.startswith("alpha_layers.") for k in report["G"].missing)
    assert G.synthesis.b16.conv1.conv_clamp == 256
    with pytest.raises(ParamsError, match=r"gmpi.channel_base: 128 in params, 96 in"):
        resolve_architecture(load_params(overrides=base + ["gmpi.channel_base=128"]))
    scratch = resolve_architecture(load_params(overrides=["dataset=ffhq256", "gmpi.pretrained=null"]))
    assert (scratch.gmpi.channel_base, scratch.gmpi.mapping_layers, scratch.gmpi.conv_clamp) == (32768, 8, None)
