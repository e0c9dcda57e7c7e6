"""``portaudit invariants`` and ``portaudit golden record|check``."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from portaudit.cli.common import cli_errors, console, default_manifests, err_console, write_output
from portaudit.errors import UsageError

FORMATS = ("table", "json", "markdown", "junit")
DEFAULT_UPSTREAM = "fla-core==0.4.0,flash-linear-attention==0.4.0"

ImplOpt = Annotated[str, typer.Option("--impl", help="Implementation under test: myfla, fla (real upstream, "
                                      "needs CUDA + Triton) or ref (fla's CPU references).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table, json, markdown or junit.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report here instead of stdout.")]
UpstreamOpt = Annotated[str, typer.Option("--upstream", help="Pinned upstream distributions (the oracles' source).")]
UpstreamPathOpt = Annotated[Optional[Path], typer.Option("--upstream-path",
                                                         help="A local upstream tree instead of --upstream.")]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _require_torch(command: str) -> None:
    """The numeric commands compute with tensors; without torch say what to install (exit 2)."""
    if not _installed("torch"):
        raise UsageError(f"portaudit {command} computes with tensors and needs torch, which is not installed "
                         "here: pip install 'portaudit[numerics]' (plus myfla for --impl myfla). The static "
                         "commands (check, gate, fix-citations, scaffold, drift, codes) need no torch.")


def _fixtures_dir(fixtures: Optional[Path]) -> Path:
    """--fixtures: a folder or PACKAGE:golden; by default ./tests/fixtures/golden (a checkout) or the
    fixtures the installed myfla ships."""
    from portaudit.static.bundled import is_reference, resolve_fixtures_reference
    if fixtures is None:
        local = Path("tests/fixtures/golden")
        return local if local.is_dir() else resolve_fixtures_reference("myfla:golden")
    return resolve_fixtures_reference(str(fixtures)) if is_reference(str(fixtures)) else fixtures


def _device(name: str):
    import torch
    if name not in ("cpu", "cuda"):
        raise UsageError(f"unknown device '{name}'; choose cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device here")
    return torch.device(name)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")


def _impl(name: str, device, upstream_root):
    from portaudit.numerics.registry import get_implementation
    if name in ("myfla", "fla") and not _installed(name):
        what = "pip install myfla" if name == "myfla" else "fla-core and flash-linear-attention with CUDA and Triton"
        raise UsageError(f"--impl {name}: the package '{name}' is not installed here ({what})")
    if name == "fla":
        if device.type != "cuda":
            raise UsageError("--impl fla runs fla's Triton kernels: pass --device cuda on a GPU machine")
        from portaudit.numerics.record import limit_triton_autotune
        limit_triton_autotune()
    return get_implementation(name, upstream_root=upstream_root)


def _upstream_root(upstream: str, upstream_path: Optional[Path]):
    from portaudit.static.upstream import resolve_upstream
    return resolve_upstream(upstream, upstream_path=upstream_path, package="fla",
                            progress=lambda m: err_console.print(f"[dim]{m}[/]"))


def _manifest_numerics(paths: Optional[List[Path]]):
    """Symbols and tolerance overrides from manifests (read as plain YAML)."""
    import yaml
    from portaudit.numerics.tolerances import overrides_from_manifest
    symbols, overrides = set(), []
    files = default_manifests(paths)
    for f in files:
        if not f.is_file():
            raise UsageError(f"manifest {f} does not exist")
        try:
            data = yaml.safe_load(f.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{f}: invalid YAML: {exc}") from exc
        for stage in data.get("stages", []) or []:
            for sym in stage.get("symbols", []) or []:
                symbols.add(sym["symbol"] if isinstance(sym, dict) else str(sym))
        overrides += overrides_from_manifest(data, where=str(f))
    return symbols, overrides


def _emit(rows, fmt: str, output: Optional[Path], title: str, notes: List[str]) -> None:
    from portaudit.numerics import results
    if fmt == "table":
        if output is not None:
            write_output(results.to_markdown(rows, title, notes), output)
        results.print_rich(rows, console=console, title=title, notes=notes)
    elif fmt == "json":
        write_output(results.to_json(rows, {"title": title}, notes) + "\n", output)
    elif fmt == "markdown":
        write_output(results.to_markdown(rows, title, notes), output)
    else:
        write_output(results.to_junit(rows, suite=title), output)


class _Bar:
    """A rich progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total: int, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.enabled = err_console.is_terminal
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[item]}"), console=err_console,
                                 transient=True) if self.enabled else None
        self.task = self.progress.add_task(label, total=total, item="") if self.enabled else None

    def __enter__(self):
        if self.enabled:
            self.progress.start()
        return self

    def __call__(self, item: str) -> None:
        if self.enabled:
            self.progress.update(self.task, advance=1, item=item)

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()


def invariants(
    op: Annotated[Optional[List[str]], typer.Option("--op", help="Op/module/layer group to check "
                                                    "(repeatable; 'all' for every group).")] = None,
    layer: Annotated[Optional[str], typer.Option("--layer", help="Only the invariants of this layer's "
                                                 "closure (KimiDeltaAttention or GatedDeltaNet).")] = None,
    manifest: Annotated[Optional[List[Path]], typer.Option("--manifest", "-m", help="Check the ops this "
                        "manifest lists and apply its numerics.tolerances overrides.")] = None,
    impl: ImplOpt = "myfla",
    device: DeviceOpt = "cpu",
    quick: Annotated[bool, typer.Option("--quick", help="First case(s) of every invariant (< 60 s).")] = False,
    hypothesis: Annotated[int, typer.Option("--hypothesis", help="Add N randomly drawn delta-rule cases.")] = 0,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for --hypothesis (printed).")] = None,
    fmt: FormatOpt = "table",
    output: OutputOpt = None,
    upstream: UpstreamOpt = DEFAULT_UPSTREAM,
    upstream_path: UpstreamPathOpt = None,
    list_ops: Annotated[bool, typer.Option("--list", help="List the known ops and invariants, then exit.")] = False,
) -> None:
    """Run named numeric invariants of fla's API against an implementation."""
    with cli_errors():
        _require_torch("invariants")
        from portaudit.numerics import invariants as engine
        from portaudit.numerics.registry import get_implementation  # noqa: F401  (import errors surface here)
        from portaudit.numerics.results import summary
        from portaudit.numerics.tolerances import ToleranceTable, invariant_rules

        _check_format(fmt)
        invs = engine.declared_invariants()
        if list_ops:
            for group in engine.known_ops(invs):
                names = sorted({i.name for i in invs if i.group == group})
                console.print(f"[bold]{group}[/]: {', '.join(names)}")
            return
        if hypothesis < 0:
            raise UsageError("--hypothesis must be >= 0")
        overrides = []
        if manifest:
            symbols, overrides = _manifest_numerics(manifest)
            def listed_api(a: str) -> bool:   # defining module or package re-export
                return a in symbols or a.rsplit(".", 2)[0] + "." + a.rsplit(".", 1)[1] in symbols
            listed = [i for i in invs if all(listed_api(a) for a in i.apis)]
            if not listed:
                raise UsageError("the manifest lists no symbol that a numeric invariant covers")
            invs = listed
        if not op and not layer and not manifest:
            raise UsageError("name what to check: --op OP (or --op all), --layer LAYER or --manifest FILE; "
                             "--list shows the ops")
        invs = engine.select(invs, op, layer)
        dev = _device(device)
        root = _upstream_root(upstream, upstream_path)
        implementation = _impl(impl, dev, root)
        if hypothesis and seed is None:
            seed = random.SystemRandom().randrange(2 ** 31)
        notes = []
        if hypothesis:
            notes.append(f"--hypothesis {hypothesis} drew its cases with --seed {seed} (pass it to replay)")
            err_console.print(f"hypothesis seed: {seed}")
        table = ToleranceTable(invariant_rules(impl), overrides)
        total = sum(len(i.cases[:i.quick] if quick else i.cases) for i in invs)
        with _Bar(total, f"invariants ({implementation.name})") as bar:
            rows = engine.run_invariants(implementation, root, invs, dev, quick=quick, hypothesis=hypothesis,
                                         seed=seed or 0, table=table, progress=bar)
        for t in table.unneeded_overrides():
            notes.append(f"tolerance override {t.op}/{t.output}/{t.dtype}={t.value:g} from {t.source} is no "
                         f"longer needed (every comparison passed the built-in tolerance)")
        _emit(rows, fmt, output, f"invariants: {implementation.name}", notes)
        s = summary(rows)
        if s["fail"] + s["error"] + s["missing"]:
            raise typer.Exit(1)


golden_app = typer.Typer(name="golden", no_args_is_help=True,
                         help="Golden fixtures recorded from the real upstream on a GPU.")


@golden_app.command("record")
def golden_record(
    out: Annotated[Path, typer.Option("--out", help="Fixture directory to write.")],
    upstream: UpstreamOpt = DEFAULT_UPSTREAM,
    impl: ImplOpt = "fla",
    device: DeviceOpt = "cuda",
    cases: Annotated[Optional[str], typer.Option("--cases", help="Comma-separated substrings of case names.")] = None,
    archive: Annotated[Optional[Path], typer.Option("--archive", help="Rewrite this .tar of --out after each "
                                                    "case (a killed run keeps what was done).")] = None,
    upstream_path: UpstreamPathOpt = None,
    safetensors: Annotated[bool, typer.Option("--safetensors", help="Write .safetensors files.")] = False,
) -> None:
    """Run the upstream (real fla: CUDA + Triton) on the declared cases and write fixtures."""
    with cli_errors():
        _require_torch("golden record")
        from portaudit.numerics.golden_cases import find_cases
        from portaudit.numerics.record import record

        dev = _device(device)
        root = None
        if impl == "ref":
            root = _upstream_root(upstream, upstream_path)
        implementation = _impl(impl, dev, root)
        selected = find_cases(cases)
        if not selected:
            raise UsageError(f"no golden case matches '{cases}'")
        writer = record(implementation, out, dev, selected, upstream.split(","), archive,
                        log=lambda m: err_console.print(m, markup=False), use_safetensors=safetensors)
        bad = [n for n, r in writer.cases.items() if r.status != "ok"]
        console.print(f"wrote {len(writer.cases) - len(bad)} cases to {out}" + (f"; {len(bad)} failed upstream: "
                                                                                 f"{', '.join(bad)}" if bad else ""))


@golden_app.command("check")
def golden_check(
    fixtures: Annotated[Optional[Path], typer.Option("--fixtures", help="Fixture directory, or PACKAGE:golden "
                        "for the fixtures an installed port ships. Default: ./tests/fixtures/golden, else "
                        "myfla:golden.")] = None,
    impl: ImplOpt = "myfla",
    device: DeviceOpt = "cpu",
    cases: Annotated[Optional[str], typer.Option("--cases", help="Comma-separated substrings of case names.")] = None,
    fmt: FormatOpt = "table",
    output: OutputOpt = None,
    upstream: UpstreamOpt = DEFAULT_UPSTREAM,
    upstream_path: UpstreamPathOpt = None,
) -> None:
    """Run an implementation on recorded inputs and compare with the recorded upstream outputs."""
    with cli_errors():
        _require_torch("golden check")
        fixtures = _fixtures_dir(fixtures)
        from portaudit.numerics.fixtures import read_fixtures
        from portaudit.numerics.golden import check_golden
        from portaudit.numerics.results import summary

        _check_format(fmt)
        fs = read_fixtures(fixtures)   # validate before anything expensive
        dev = _device(device)
        root = _upstream_root(upstream, upstream_path) if impl == "ref" else None
        implementation = _impl(impl, dev, root)
        n = len(fs.cases)
        with _Bar(n, f"golden ({implementation.name})") as bar:
            rows = check_golden(implementation, fixtures, dev, cases, progress=bar)
        env = fs.meta.get("environment", {})
        notes = [f"fixtures: {fixtures} recorded with fla-core {env.get('fla-core')} on {env.get('gpu')} "
                 f"(torch {env.get('torch')}, triton {env.get('triton')})"]
        _emit(rows, fmt, output, f"golden: {implementation.name}", notes)
        s = summary(rows)
        if s["fail"] + s["error"] + s["missing"]:
            raise typer.Exit(1)
