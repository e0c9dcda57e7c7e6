"""``import fla`` and ``import causal_conv1d`` served by myfla: ``myfla.install_as_fla()``,
``myfla.install_as_causal_conv1d()`` and their PYTHONPATH shims.

Every case runs in a fresh interpreter (the alias changes ``sys.modules`` and ``sys.meta_path``).
A "real fla" is a stand-in package named ``fla`` on ``sys.path``. Whether it "can run" is
``myfla.alias.real_fla_can_run()`` (a ``triton`` package and a GPU), tested on its own in this process;
the children set it to answer True or False where the case needs one (no child needs torch for that),
so that the cases hold on a machine with a GPU too.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from myfla.alias import CAUSAL_CONV1D_SHIM_DIR, SHIM_DIR

REPO = Path(__file__).resolve().parents[3]
CAN_RUN = "import myfla.alias\nmyfla.alias.real_fla_can_run = lambda: {}\n"


def run_child(code: str, *paths, env=None, check=True, fake_gpu=None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``paths`` (then the repository) as PYTHONPATH;
    ``fake_gpu`` True or False: a real fla there can run, or cannot (None: as this machine says)."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "MYFLA_AS_FLA", "MYFLA_AS_CAUSAL_CONV1D")}
    environ.update(env or {})
    environ["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + [str(REPO)])
    code = ("" if fake_gpu is None else CAN_RUN.format(fake_gpu)) + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                          text=True, cwd=str(REPO), timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def real_fla(tmp_path):
    """A directory holding a package ``fla`` that is not myfla."""
    root = tmp_path / "real"
    (root / "fla" / "ops").mkdir(parents=True)
    (root / "fla" / "__init__.py").write_text("REAL = True\n__version__ = '0.4.0'\n")
    (root / "fla" / "ops" / "__init__.py").write_text("REAL_OPS = True\n")
    return root


def test_install_as_fla_serves_myfla_modules_lazily_under_both_names():
    out = run_child("""
        import importlib, pickle, sys
        import myfla
        assert myfla.active_fla() is None
        assert myfla.install_as_fla() == "myfla"
        assert "fla.ops" not in sys.modules and "myfla.ops" not in sys.modules      # nothing eager
        import fla.ops.kda.chunk
        import myfla.ops.kda.chunk
        assert sys.modules["fla"] is myfla
        assert sys.modules["fla.ops.kda"] is myfla.ops.kda
        assert sys.modules["fla.ops.kda.chunk"] is myfla.ops.kda.chunk
        assert "fla.layers" not in sys.modules and "myfla.layers" not in sys.modules
        from fla.layers.kda import KimiDeltaAttention          # from fla.X import Y
        from fla.ops import gated_delta_rule                    # a submodule through from-import
        import fla.modules.convolution as conv                  # import fla.X.Y as Z
        assert KimiDeltaAttention is sys.modules["myfla.layers.kda"].KimiDeltaAttention
        assert KimiDeltaAttention.__module__ == "myfla.layers.kda"
        assert gated_delta_rule is sys.modules["myfla.ops.gated_delta_rule"]
        assert conv is sys.modules["myfla.modules.convolution"]
        assert fla.ops.kda.__spec__.name == "myfla.ops.kda"   # the module keeps its own spec
        importlib.reload(fla.ops.kda.chunk)
        # a pickle that names fla.* (as one made with real fla) loads into myfla
        assert pickle.loads(b"cfla.ops.kda.chunk\\nchunk_kda\\n.") is fla.ops.kda.chunk.chunk_kda
        try:
            import fla.ops.gsa
        except ModuleNotFoundError as error:
            assert error.name == "fla.ops.gsa" and "myfla has no 'myfla.ops.gsa'" in str(error), error
        else:
            raise AssertionError("fla.ops.gsa imported")
        assert myfla.active_fla() == "myfla"
        print(pickle.dumps(conv.ShortConvolution(8, 4)).hex())
        myfla.uninstall_as_fla()
        assert not [n for n in sys.modules if n == "fla" or n.startswith("fla.")]
        try:
            import fla
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("fla still importable after uninstall_as_fla()")
        """)
    # what the aliased process pickled names myfla, so it loads here without the alias
    module = pickle.loads(bytes.fromhex(out.stdout.strip().splitlines()[-1]))
    assert type(module).__module__ == "myfla.modules.convolution"
    assert "fla" not in sys.modules


def test_real_fla_can_run_needs_triton_and_a_gpu(monkeypatch):
    import importlib.machinery
    import importlib.util

    import torch
    from myfla.alias import real_fla_can_run
    find_spec = importlib.util.find_spec
    installed = {"triton": None}

    def fake_find_spec(name, *args):
        if name == "triton":
            return installed["triton"]
        return find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    if getattr(torch, "xpu", None) is not None:
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not real_fla_can_run()                                  # a GPU but no Triton
    installed["triton"] = importlib.machinery.ModuleSpec("triton", None)
    assert real_fla_can_run()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not real_fla_can_run()                                  # Triton but no GPU


def test_real_fla_that_can_run_is_not_shadowed_unless_forced(real_fla):
    run_child("""
        import sys, myfla
        assert myfla.active_fla() == "fla"
        assert myfla.install_as_fla() == "fla"
        assert myfla.active_fla() == "fla"
        import fla, fla.ops
        assert fla.REAL and fla.ops.REAL_OPS
        try:
            myfla.install_as_fla(force=True)
        except RuntimeError as error:
            assert "already imported" in str(error)
        else:
            raise AssertionError("replaced an imported fla")
        """, real_fla, fake_gpu=True)
    run_child("""
        import sys, myfla
        assert myfla.install_as_fla(force=True) == "myfla"
        import fla
        assert fla is myfla
        assert "is shadowed (forced)" in myfla.alias.describe(), myfla.alias.describe()
        """, real_fla, fake_gpu=True)


def test_real_fla_that_cannot_run_is_shadowed(real_fla):
    run_child("""
        import myfla
        assert myfla.install_as_fla() == "myfla"          # no Triton here: that fla cannot run
        import fla
        assert fla is myfla
        from myfla.alias import describe
        assert "is shadowed (it cannot run here)" in describe(), describe()
        """, real_fla, fake_gpu=False)


def test_install_after_a_real_fla_was_imported_is_refused(real_fla):
    proc = run_child("""
        import fla, myfla
        myfla.install_as_fla()
        """, real_fla, check=False, fake_gpu=False)
    assert proc.returncode != 0
    assert "RuntimeError: a real fla is already imported from" in proc.stderr
    assert "call myfla.install_as_fla() before anything imports fla" in proc.stderr


def test_pythonpath_shim_serves_myfla_without_code_changes():
    run_child("""
        import sys
        import fla.ops.gated_delta_rule
        import myfla.ops.gated_delta_rule
        assert sys.modules["fla"] is sys.modules["myfla"]
        assert fla.ops.gated_delta_rule is myfla.ops.gated_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        assert chunk_gated_delta_rule.__module__ == "myfla.ops.gated_delta_rule.chunk"
        """, SHIM_DIR)
    status = subprocess.run([sys.executable, "-m", "myfla.alias"], capture_output=True, text=True, cwd=str(REPO),
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join([SHIM_DIR, str(REPO)])))
    assert status.returncode == 0 and status.stdout.startswith("fla -> myfla 0.4.0"), status
    shim_dir = subprocess.run([sys.executable, "-m", "myfla.alias", "--shim-dir"], capture_output=True, text=True,
                              cwd=str(REPO))
    assert shim_dir.stdout.strip() == SHIM_DIR and Path(SHIM_DIR, "fla", "__init__.py").is_file()


def test_pythonpath_shim_modes(real_fla):
    check_real = "import fla\nassert getattr(fla, 'REAL', False), fla\n"
    check_myfla = "import fla, myfla\nassert fla is myfla\n"
    run_child(check_real, SHIM_DIR, real_fla, fake_gpu=True)                       # auto: fla can run
    run_child(check_myfla, SHIM_DIR, real_fla, env={"MYFLA_AS_FLA": "force"}, fake_gpu=True)
    run_child(check_myfla, SHIM_DIR, real_fla, fake_gpu=False)                     # auto: fla cannot run
    run_child(check_real, SHIM_DIR, real_fla, env={"MYFLA_AS_FLA": "off"})
    off = run_child("import fla", SHIM_DIR, env={"MYFLA_AS_FLA": "off"}, check=False)
    assert "ModuleNotFoundError: No module named 'fla' (MYFLA_AS_FLA=off" in off.stderr
    bad = run_child("import fla", SHIM_DIR, env={"MYFLA_AS_FLA": "maybe"}, check=False)
    assert "MYFLA_AS_FLA='maybe': expected one of auto, force, off" in bad.stderr


def test_pythonpath_shim_binds_transformers_to_myfla():
    """The environment-level switch with the real client: transformers' Kimi Linear and Qwen3-Next
    modeling modules bind their fla ops to myfla, no client code changed."""
    hub = pytest.importorskip("transformers.integrations.hub_kernels")
    pytest.importorskip("transformers.models.kimi_linear")
    if not hasattr(hub, "use_kernel_func_from_hub_with_fallback"):
        pytest.skip("transformers < 5 binds fla only when CUDA is available")
    out = run_child("""
        import transformers.models.kimi_linear.modeling_kimi_linear as kimi
        import transformers.models.qwen3_next.modeling_qwen3_next as qwen
        for fn in (kimi.chunk_kimi_delta_attention, kimi.recurrent_kimi_delta_attention,
                   qwen.torch_chunk_gated_delta_rule, qwen.torch_recurrent_gated_delta_rule):
            cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))
            print(cells["implementation"].__module__, cells["implementation"].__name__)
        """, SHIM_DIR)
    assert out.stdout.split("\n")[:4] == [
        "myfla.ops.kda.chunk chunk_kda", "myfla.ops.kda.fused_recurrent fused_recurrent_kda",
        "myfla.ops.gated_delta_rule.chunk chunk_gated_delta_rule",
        "myfla.ops.gated_delta_rule.fused_recurrent fused_recurrent_gated_delta_rule"]


# ---- causal_conv1d: the same finder, its own switch ----------------------------------------------------

FAKE_CONV_GPU = "import myfla.alias\nmyfla.alias.real_causal_conv1d_can_run = lambda: True\n"


@pytest.fixture
def real_causal_conv1d(tmp_path):
    """A directory holding a package ``causal_conv1d`` that is not myfla's."""
    root = tmp_path / "real_conv"
    (root / "causal_conv1d").mkdir(parents=True)
    (root / "causal_conv1d" / "__init__.py").write_text("REAL = True\n__version__ = '1.6.1'\n")
    return root


def test_install_as_causal_conv1d_serves_the_package_api_lazily_and_apart_from_fla():
    run_child("""
        import sys
        import myfla
        assert myfla.active_causal_conv1d() is None
        assert myfla.install_as_causal_conv1d() == "myfla"
        assert myfla.active_fla() is None                                   # fla is a separate request
        assert "myfla._causal_conv1d" not in sys.modules                  # nothing eager
        import causal_conv1d
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
        from causal_conv1d.causal_conv1d_interface import causal_conv1d_fn as fn_interface
        import myfla.modules.causal_conv1d_package as package
        assert causal_conv1d is sys.modules["myfla._causal_conv1d"]
        assert causal_conv1d_fn is fn_interface is package.causal_conv1d_fn
        assert causal_conv1d_update is package.causal_conv1d_update
        try:
            import causal_conv1d.cpp_functions
        except ModuleNotFoundError as error:
            assert error.name == "causal_conv1d.cpp_functions", error
            assert "`causal_conv1d` is served by myfla (myfla.install_as_causal_conv1d" in str(error), error
        else:
            raise AssertionError("causal_conv1d.cpp_functions imported")
        try:
            import fla
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("install_as_causal_conv1d() served fla")
        assert myfla.active_causal_conv1d() == "myfla"
        myfla.uninstall_as_causal_conv1d()
        assert not [n for n in sys.modules if n.split(".")[0] == "causal_conv1d"]
        try:
            import causal_conv1d
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("causal_conv1d still importable after uninstall_as_causal_conv1d()")
        """)


def test_real_causal_conv1d_can_run_needs_a_gpu_and_its_extension(monkeypatch):
    import types

    import torch
    from myfla.alias import real_causal_conv1d_can_run
    monkeypatch.delitem(sys.modules, "causal_conv1d_cuda", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not real_causal_conv1d_can_run()                        # a GPU, but the extension does not import
    monkeypatch.setitem(sys.modules, "causal_conv1d_cuda", types.ModuleType("causal_conv1d_cuda"))
    assert real_causal_conv1d_can_run()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not real_causal_conv1d_can_run()                        # the extension, but no GPU


def test_real_causal_conv1d_that_can_run_is_not_shadowed_unless_forced(real_causal_conv1d):
    run_child(FAKE_CONV_GPU + textwrap.dedent("""
        import myfla
        assert myfla.active_causal_conv1d() == "causal_conv1d"
        assert myfla.install_as_causal_conv1d() == "causal_conv1d"
        import causal_conv1d
        assert causal_conv1d.REAL
        assert "causal_conv1d -> the real causal_conv1d" in myfla.alias.describe_causal_conv1d()
        try:
            myfla.install_as_causal_conv1d(force=True)
        except RuntimeError as error:
            assert "a real causal_conv1d is already imported from" in str(error), error
        else:
            raise AssertionError("replaced an imported causal_conv1d")
        """), real_causal_conv1d)
    run_child(FAKE_CONV_GPU + textwrap.dedent("""
        import sys, myfla
        assert myfla.install_as_causal_conv1d(force=True) == "myfla"
        import causal_conv1d
        assert causal_conv1d is sys.modules["myfla._causal_conv1d"]
        assert "is shadowed (forced)" in myfla.alias.describe_causal_conv1d()
        """), real_causal_conv1d)
    run_child("""
        import sys, myfla
        assert myfla.install_as_causal_conv1d() == "myfla"             # no GPU here: it cannot run
        import causal_conv1d
        assert causal_conv1d is sys.modules["myfla._causal_conv1d"]
        assert "is shadowed (it cannot run here)" in myfla.alias.describe_causal_conv1d()
        """, real_causal_conv1d)


def test_causal_conv1d_shim_modes_and_status(real_causal_conv1d):
    check_real = "import causal_conv1d\nassert getattr(causal_conv1d, 'REAL', False), causal_conv1d\n"
    check_myfla = "import sys, causal_conv1d\nassert causal_conv1d is sys.modules['myfla._causal_conv1d']\n"
    conv_gpu = FAKE_CONV_GPU
    run_child(conv_gpu + check_real, CAUSAL_CONV1D_SHIM_DIR, real_causal_conv1d)        # auto: it can run
    run_child(conv_gpu + check_myfla, CAUSAL_CONV1D_SHIM_DIR, real_causal_conv1d,
              env={"MYFLA_AS_CAUSAL_CONV1D": "force"})
    run_child(check_myfla, CAUSAL_CONV1D_SHIM_DIR, real_causal_conv1d)                  # auto: it cannot run
    run_child(check_real, CAUSAL_CONV1D_SHIM_DIR, real_causal_conv1d, env={"MYFLA_AS_CAUSAL_CONV1D": "off"})
    off = run_child("import causal_conv1d", CAUSAL_CONV1D_SHIM_DIR, env={"MYFLA_AS_CAUSAL_CONV1D": "off"},
                    check=False)
    assert "ModuleNotFoundError: No module named 'causal_conv1d' (MYFLA_AS_CAUSAL_CONV1D=off" in off.stderr
    bad = run_child("import causal_conv1d", CAUSAL_CONV1D_SHIM_DIR, env={"MYFLA_AS_CAUSAL_CONV1D": "maybe"},
                    check=False)
    assert "MYFLA_AS_CAUSAL_CONV1D='maybe': expected one of auto, force, off" in bad.stderr
    # the fla shim alone does not serve causal_conv1d, nor the conv shim fla
    run_child("import importlib.util as u\nassert u.find_spec('causal_conv1d') is None", SHIM_DIR)
    run_child("import importlib.util as u\nassert u.find_spec('fla') is None", CAUSAL_CONV1D_SHIM_DIR)
    both = subprocess.run([sys.executable, "-m", "myfla.alias", "--shim-dir", "fla", "causal_conv1d"],
                          capture_output=True, text=True, cwd=str(REPO))
    assert both.stdout.strip() == os.pathsep.join([SHIM_DIR, CAUSAL_CONV1D_SHIM_DIR]), both
    status = subprocess.run([sys.executable, "-m", "myfla.alias"], capture_output=True, text=True, cwd=str(REPO),
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join([both.stdout.strip(), str(REPO)])))
    lines = status.stdout.splitlines()
    assert lines[0].startswith("fla -> myfla 0.4.0"), status
    assert lines[1].startswith("causal_conv1d -> myfla 0.4.0") and lines[1].endswith("_causal_conv1d)"), status


def test_shims_bind_transformers_conv_to_myfla():
    """With both shims on PYTHONPATH, transformers' Qwen3-Next and Kimi Linear bind their short
    convolution (``causal_conv1d_fn``, ``causal_conv1d_update``) to myfla, no client code changed."""
    hub = pytest.importorskip("transformers.integrations.hub_kernels")
    pytest.importorskip("transformers.models.kimi_linear")
    if not hasattr(hub, "use_kernel_func_from_hub_with_fallback"):
        pytest.skip("transformers < 5 binds causal_conv1d only when CUDA is available")
    out = run_child("""
        import transformers.models.kimi_linear.modeling_kimi_linear as kimi
        import transformers.models.qwen3_next.modeling_qwen3_next as qwen
        for fn in (kimi.causal_conv1d_fn, kimi.causal_conv1d_update, qwen.causal_conv1d_fn, qwen.causal_conv1d_update):
            cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))
            print(cells["implementation"].__module__, cells["implementation"].__name__)
        """, SHIM_DIR, CAUSAL_CONV1D_SHIM_DIR)
    assert out.stdout.split("\n")[:4] == [
        "myfla.modules.causal_conv1d_package causal_conv1d_fn",
        "myfla.modules.causal_conv1d_package causal_conv1d_update"] * 2
