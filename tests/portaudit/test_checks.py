"""Every static rule on small synthetic trees: a passing and a failing case each."""

from __future__ import annotations

import pytest

from portaudit.static.citations import format_citation
from portaudit.static.index.tree import TreeIndex

from tests.portaudit.conftest import open_codes

UPSTREAM = {"up/m.py": '''
import torch
import triton


def f(a, b=1, *, c=None):
    return a + b


class K:
    def __init__(self, n=2):
        self.n = n

    def run(self, x):
        return x * self.n


class Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, g):
        raise NotImplementedError("Backward pass is not implemented yet")


@triton.jit
def kern(x):
    pass


def launch(x):
    return kern(x)


CONST = 3
'''}

SYMBOLS = ["up.m.f", "up.m.K", "up.m.Fn", "{symbol: up.m.kern, kind: kernel}", "up.m.launch", "up.m.CONST"]


def cite(ws, name: str) -> str:
    ws.files(upstream=UPSTREAM)
    d = TreeIndex(ws.up).module("up.m").definitions[name]
    return format_citation("up/m.py", d.start, d.end, "up", "1.0")


def port_source(ws, **override) -> str:
    """A faithful port of UPSTREAM; ``override`` replaces one definition's source."""
    parts = {
        "f": f'def f(a, b=1, *, c=None):\n    """Add.\n\n    {cite(ws, "f")}\n    """\n    return a + b\n',
        "K": (f'class K:\n    """{cite(ws, "K")}"""\n\n    def __init__(self, n=2):\n        self.n = n\n\n'
              '    def run(self, x):\n        return x * self.n\n'),
        "Fn": (f'class Fn(torch.autograd.Function):\n    """{cite(ws, "Fn")}"""\n\n    @staticmethod\n'
               '    def forward(ctx, x):\n        return x\n\n    @staticmethod\n    def backward(ctx, g):\n'
               '        raise NotImplementedError("Backward pass is not implemented yet")\n'),
        "launch": (f'def launch(x):\n    """Runs the kernel math.\n\n    {cite(ws, "launch")}\n'
                   f'    {cite(ws, "kern")}\n    """\n    return x * 2\n'),
        "CONST": f"# {cite(ws, 'CONST')}\nCONST = 3\n",
    }
    parts.update(override)
    return "import torch\n\n\n" + "\n\n".join(v for v in parts.values() if v) + "\n"


def audit(ws, port=None, symbols=None, **kw):
    ws.files(upstream=UPSTREAM)
    ws.files(port={"po/m.py": port if port is not None else port_source(ws)})
    return ws.audit(symbols or SYMBOLS, **kw)


def test_faithful_port_is_complete(ws):
    r = audit(ws)
    assert open_codes(r) == []
    assert r.passed == r.total == 6
    kern = next(s for s in r.symbols if s.symbol == "up.m.kern")
    assert kern.accounted_by.startswith("cited by up/m.py:L")


# -- presence ---------------------------------------------------------------------------------

def test_pa101_module_missing(ws):
    ws.files(upstream=UPSTREAM, port={"po/other.py": "X = 1\n"})
    r = ws.audit(["up.m.f"])
    assert open_codes(r) == ["PA101"]
    assert r.findings[0].file.endswith("m.yaml")


def test_pa102_symbol_missing(ws):
    r = audit(ws, port_source(ws, f=""))
    assert "PA102" in open_codes(r)
    assert audit_status(r, "up.m.f") == "missing"


def audit_status(r, sym):
    return next(s for s in r.symbols if s.symbol == sym).status


def test_pa103_kind_mismatch(ws):
    r = audit(ws, port_source(ws, K=f'def K(n=2):\n    """{cite(ws, "K")}"""\n    return n\n'))
    assert "PA103" in open_codes(r)


def test_pa104_method_missing(ws):
    r = audit(ws, port_source(ws, K=f'class K:\n    """{cite(ws, "K")}"""\n\n    def __init__(self, n=2):\n'
                                    '        self.n = n\n'))
    assert [f.detail for f in r.findings if f.code == "PA104"] == ["run"]


def test_pa104_inherited_method_counts(ws):
    base = 'class Base:\n    def run(self, x):\n        return x * self.n\n'
    k = f'class K(Base):\n    """{cite(ws, "K")}"""\n\n    def __init__(self, n=2):\n        self.n = n\n'
    r = audit(ws, port_source(ws, K=base + "\n\n" + k))
    assert "PA104" not in open_codes(r)


def test_pa105_kernel_not_accounted(ws):
    launch = f'def launch(x):\n    """{cite(ws, "launch")}"""\n    return x * 2\n'
    r = audit(ws, port_source(ws, launch=launch))
    assert open_codes(r) == ["PA105"]


def test_pa105_same_named_torch_function_accounts(ws):
    launch = f'def launch(x):\n    """{cite(ws, "launch")}"""\n    return kern(x)\n'
    kern = f'def kern(x):\n    """{cite(ws, "kern")}"""\n    return x * 1\n'
    r = audit(ws, port_source(ws, launch=launch, kern=kern))
    assert open_codes(r) == []
    assert "same-named" in next(s for s in r.symbols if s.symbol == "up.m.kern").accounted_by


# -- signatures -------------------------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [
    ("a, b=1", "PA201"),                       # c missing
    ("a, b=1, *, c=None, d=0", "PA202"),       # extra d
    ("b=1, a=0, *, c=None", "PA203"),          # order (and a gains a default)
    ("a, b=1, c=None", "PA204"),               # c no longer keyword-only
    ("a, b, *, c=None", "PA205"),              # b lost its default
    ("a, b=2, *, c=None", "PA206"),            # default value
    ("a, b=1, *args, c=None", "PA202"),        # extra *args
    ("a: int, b=1, *, c=None", "PA207"),       # annotation only
])
def test_signature_taxonomy(ws, sig, code):
    f = f'def f({sig}):\n    """{cite(ws, "f")}"""\n    return a + b\n'
    r = audit(ws, port_source(ws, f=f))
    assert code in open_codes(r)
    if code == "PA207":
        assert open_codes(r) == ["PA207"] and audit_status(r, "up.m.f") == "ok"  # a warning only
    else:
        assert audit_status(r, "up.m.f") == "incomplete"


def test_default_values_compare_as_normalised_source(ws):
    f = f'def f(a, b=(1), *, c = None):\n    """{cite(ws, "f")}"""\n    return a + b\n'
    assert open_codes(audit(ws, port_source(ws, f=f))) == []


def test_method_signatures_are_compared(ws):
    k = (f'class K:\n    """{cite(ws, "K")}"""\n\n    def __init__(self, n=3):\n        self.n = n\n\n'
         '    def run(self, x):\n        return x * self.n\n')
    r = audit(ws, port_source(ws, K=k))
    assert [(f.code, f.symbol, f.param) for f in r.findings] == [("PA206", "up.m.K.__init__", "n")]


# -- citations --------------------------------------------------------------------------------

def test_pa301_citation_missing(ws):
    r = audit(ws, port_source(ws, f='def f(a, b=1, *, c=None):\n    """Add."""\n    return a + b\n'))
    assert open_codes(r) == ["PA301"]


def test_pa301_constant_comment(ws):
    r = audit(ws, port_source(ws, CONST="CONST = 3\n"))
    assert open_codes(r) == ["PA301"]


def test_pa302_version_mismatch(ws):
    f = f'def f(a, b=1, *, c=None):\n    """{cite(ws, "f").replace("up 1.0", "up 0.9")}"""\n    return a + b\n'
    assert open_codes(audit(ws, port_source(ws, f=f))) == ["PA302"]


def test_pa303_file_missing(ws):
    f = 'def f(a, b=1, *, c=None):\n    """Source: up/gone.py:L1-L2 (up 1.0)"""\n    return a + b\n'
    assert open_codes(audit(ws, port_source(ws, f=f))) == ["PA303", "PA305"]


def test_pa304_range_outside_file(ws):
    f = 'def f(a, b=1, *, c=None):\n    """Source: up/m.py:L5-L900 (up 1.0)"""\n    return a + b\n'
    assert open_codes(audit(ws, port_source(ws, f=f))) == ["PA304"]


def test_pa305_does_not_cover(ws):
    c = cite(ws, "K")  # a real range, but of another definition
    f = f'def f(a, b=1, *, c=None):\n    """{c}"""\n    return a + b\n'
    assert open_codes(audit(ws, port_source(ws, f=f))) == ["PA305"]


def test_pa306_malformed(ws):
    f = (f'def f(a, b=1, *, c=None):\n    """{cite(ws, "f")}\n\n    Source: up/m.py line 5\n    """\n'
         '    return a + b\n')
    assert open_codes(audit(ws, port_source(ws, f=f))) == ["PA306"]


# -- no simplification ------------------------------------------------------------------------

@pytest.mark.parametrize("body, code", [
    ("pass", "PA401"),
    ("...", "PA401"),
    ("raise NotImplementedError", "PA401"),
    ("if a:\n        raise NotImplementedError('no')\n    return a + b", "PA402"),
    ("return 0", "PA404"),
    ("return None, None", "PA404"),                   # a backward that returns no gradients
    ("return a", "PA406"),                            # an identity stand-in
    ("return torch.zeros_like(a)", "PA406"),          # a placeholder output of the right shape
    ("return a.new_zeros(a.shape), None", "PA406"),
    ("if a is None:\n        warnings.warn('no a')\n    assert b\n    return torch.zeros_like(a)", "PA406"),
    ("# TODO vectorise\n    return a + b", "PA403"),
    ("return a + b  # simplified version", "PA403"),
    ("return a + b  # this stub", "PA403"),
])
def test_no_simplification(ws, body, code):
    f = f'def f(a, b=1, *, c=None):\n    """{cite(ws, "f")}"""\n    {body}\n'
    r = audit(ws, port_source(ws, f=f))
    assert code in open_codes(r)
    assert audit_status(r, "up.m.f") == "incomplete"


@pytest.mark.parametrize("body", ["return a + b", "return torch.zeros_like(a) + b", "return (a, b)[0] + 0",
                                  "a.mul_(b)\n    return a", "if b:\n        a = a + b\n    return a",
                                  "if b:\n        return a + b\n    return a"])
def test_computing_returns_are_not_stand_ins(ws, body):
    f = f'def f(a, b=1, *, c=None):\n    """{cite(ws, "f")}"""\n    {body}\n'
    assert open_codes(audit(ws, port_source(ws, f=f))) == []


def test_stand_in_where_upstream_returns_its_argument_too(ws):
    # Fn.forward is `return x` upstream: the faithful port's `return x` is no stand-in
    r = audit(ws)
    assert not [f for f in r.findings if f.code == "PA406"]


CONFIG_UP = {"up/c.py": "class Config:\n    model_type = 'kda'\n    keys = ['past']\n    n = 2 * 3\n\n"
                        "    def __init__(self, hidden=8):\n        self.hidden = hidden\n"}


@pytest.mark.parametrize("body, codes", [
    ("model_type = 'kda'\n    keys = ['past']", []),
    ('model_type = "kda"\n    keys = [ "past" ]', []),              # spelling differs, value does not
    ("model_type = 'kda_port'\n    keys = ['past']", ["PA407"]),
    ("model_type = 'kda'\n    keys = ['past', 'cache']", ["PA407"]),
    ("model_type = 'kda'\n    keys = ['past']\n    n = 7", []),      # upstream computes n: not compared
    ("model_type = 'kda'", []),                                      # absent: inherited or set elsewhere
])
def test_pa407_class_attribute_differs(ws, body, codes):
    ws.files(upstream=CONFIG_UP)
    d = TreeIndex(ws.up).module("up.c").definitions["Config"]
    c = format_citation("up/c.py", d.start, d.end, "up", "1.0")
    ws.files(port={"po/c.py": f'class Config:\n    """{c}"""\n    {body}\n\n'
                              "    def __init__(self, hidden=8):\n        self.hidden = hidden\n"})
    assert open_codes(ws.audit(["up.c.Config"])) == codes


def test_marker_in_docstring(ws):
    f = f'def f(a, b=1, *, c=None):\n    """A placeholder.\n\n    {cite(ws, "f")}\n    """\n    return a + b\n'
    assert open_codes(audit(ws, port_source(ws, f=f))) == ["PA403"]


def test_not_implemented_where_upstream_raises_is_allowed(ws):
    # Fn.backward raises upstream with the words "not implemented": the faithful port may too
    r = audit(ws)
    assert audit_status(r, "up.m.Fn") == "ok"


def test_pa402_method_raising_where_upstream_does_not(ws):
    fn = (f'class Fn(torch.autograd.Function):\n    """{cite(ws, "Fn")}"""\n\n    @staticmethod\n'
          '    def forward(ctx, x):\n        if x is None:\n            raise NotImplementedError\n        return x\n\n'
          '    @staticmethod\n    def backward(ctx, g):\n        raise NotImplementedError("Backward pass is not implemented yet")\n')
    r = audit(ws, port_source(ws, Fn=fn))
    assert [(f.code, f.symbol) for f in r.findings] == [("PA402", "up.m.Fn.forward")]


# -- manifest hygiene, waivers, deviations ----------------------------------------------------

def test_pa501_symbol_not_upstream(ws):
    r = audit(ws, symbols=SYMBOLS + ["up.m.nothing"])
    assert open_codes(r) == ["PA501"]


def test_pa504_duplicate(ws):
    r = audit(ws, symbols=SYMBOLS + ["up.m.f"])
    assert open_codes(r) == ["PA504"]


def test_pa506_declared_kind(ws):
    r = audit(ws, symbols=SYMBOLS[:-1] + ["{symbol: up.m.CONST, kind: function}"])
    assert open_codes(r) == ["PA506"]


def test_waiver_applies_and_unused_waiver_is_a_finding(ws):
    f = f'def f(a, b=2, *, c=None):\n    """{cite(ws, "f")}"""\n    return a + b\n'
    r = audit(ws, port_source(ws, f=f), waivers='''
        - {symbol: up.m.f, code: PA206, reason: "the port's default follows the paper"}
        - {symbol: up.m.K, code: PA101, reason: "stale"}
        ''')
    waived = [f for f in r.findings if f.status == "waived"]
    assert [(f.code, f.reason) for f in waived] == [("PA206", "the port's default follows the paper")]
    assert audit_status(r, "up.m.f") == "waived" and r.passed == r.total
    assert open_codes(r) == ["PA502"]


def test_pa503_reasonless_waiver_is_ignored(ws):
    f = f'def f(a, b=2, *, c=None):\n    """{cite(ws, "f")}"""\n    return a + b\n'
    r = audit(ws, port_source(ws, f=f), waivers="  - {symbol: up.m.f, code: PA206}\n")
    assert open_codes(r) == ["PA206", "PA503"]


def test_deviation_marks_findings_and_unknown_deviation(ws):
    f = f'def f(a, b=2, *, c=None):\n    """{cite(ws, "f")}"""\n    return a + b\n'
    r = audit(ws, port_source(ws, f=f), deviations='''
        - {symbol: up.m.f, reason: "fixed as upstream 1.1 does", fixed_upstream_in: "1.1"}
        - {symbol: up.m.gone, reason: "x"}
        ''')
    f206 = next(x for x in r.findings if x.code == "PA206")
    assert f206.deviation == "fixed as upstream 1.1 does" and f206.status == "open"   # never hidden
    assert open_codes(r) == ["PA206", "PA505"]


def test_pa405_literal_constant_where_upstream_computes(ws):
    up = dict(UPSTREAM)
    up["up/m.py"] = UPSTREAM["up/m.py"] + "\nFLAG = torch.cuda.is_available()\nSIZES = [16, 32]\n"
    base = port_source(ws)        # citations of the unchanged definitions (their lines stay the same)
    ws.files(upstream=up)
    d = TreeIndex(ws.up).module("up.m").definitions
    extra = (f"# {format_citation('up/m.py', d['FLAG'].start, d['FLAG'].end, 'up', '1.0')}\nFLAG = False\n"
             f"# {format_citation('up/m.py', d['SIZES'].start, d['SIZES'].end, 'up', '1.0')}\nSIZES = [16, 32]\n")
    ws.files(port={"po/m.py": base + "\n" + extra})
    r = ws.audit(SYMBOLS + ["up.m.FLAG", "up.m.SIZES"])
    assert [(f.code, f.symbol) for f in r.findings] == [("PA405", "up.m.FLAG")]   # SIZES is literal upstream too
