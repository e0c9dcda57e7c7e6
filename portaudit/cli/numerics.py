"""``portaudit invariants`` and ``portaudit golden record|check``."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from portaudit.cli.common import cli_errors, console, err_console, register_inputs, write_output
from portaudit.errors import UsageError

FORMATS = ("table", "json", "markdown", "junit")

ImplOpt = Annotated[Optional[str], typer.Option("--impl", help="Implementation under test: myfla, fla (real "
                    "upstream, needs CUDA + Triton), ref (the registry's CPU references) or an implementation YAML "
                    "file. Default: the manifest's implementation, else myfla.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table, json, markdown or junit.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report here instead of stdout.")]
UpstreamOpt = Annotated[Optional[str], typer.Option("--upstream", help="Pinned upstream distributions (the oracles' "
                        "source). Default: the case registry's (fla 0.4.0 for fla-0.4.0).")]
UpstreamPathOpt = Annotated[Optional[Path], typer.Option("--upstream-path",
                                                         help="A local upstream tree instead of --upstream.")]
RegistryOpt = Annotated[Optional[str], typer.Option("--registry", help="Case registry: a built-in name (fla-0.4.0) "
                        "or a module path defining REGISTRY. Default: the manifest's numerics.cases, else "
                        "fla-0.4.0.")]
NumericsManifestOpt = Annotated[Optional[List[Path]], typer.Option(
    "--manifest", "-m", help="A manifest or implementation file (repeatable; a directory means its *.yaml): its "
    "stage symbols pick the checks, numerics.implementation says how to call the port, numerics.cases names the "
    "case registry, numerics.tolerances loosens tolerances (with reasons).")]


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


def _manifest_files(paths: Optional[List[Path]]) -> List[Path]:
    from portaudit.static.bundled import is_reference, resolve_manifest_reference
    files: List[Path] = []
    for p in paths or []:
        if is_reference(str(p)):
            files += resolve_manifest_reference(str(p))
        elif p.is_dir():
            found = sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml"))
            if not found:
                raise UsageError(f"{p}: no *.yaml manifests in this directory")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"manifest {p} does not exist")
    register_inputs(*files)
    return files


class _Setup:
    """What the manifests, --registry and --impl decide together: registry, symbols, tolerances,
    the implementation to build (resolved after the upstream tree is known)."""

    def __init__(self, manifests: Optional[List[Path]], registry_name: Optional[str]):
        from portaudit.numerics.case_registry import DEFAULT_REGISTRY, load_case_registry
        from portaudit.numerics.impl_spec import load_numerics_config

        self.configs = [load_numerics_config(f) for f in _manifest_files(manifests)]
        named = {c.cases for c in self.configs if c.cases}
        if registry_name is None and len(named) > 1:
            raise UsageError(f"the manifests name different case registries ({', '.join(sorted(named))}); "
                             f"pass --registry")
        self.registry = load_case_registry(registry_name or (named.pop() if named else DEFAULT_REGISTRY))
        self.symbols = set().union(*(c.symbols for c in self.configs)) if self.configs else set()
        self.overrides = [t for c in self.configs for t in c.tolerances]

    def upstream_root(self, upstream: Optional[str], upstream_path: Optional[Path]):
        from portaudit.static.upstream import resolve_upstream
        dists = upstream or ",".join(self.registry.upstream)
        self.upstream = dists.split(",")
        return resolve_upstream(dists, upstream_path=upstream_path, package=self.registry.upstream_package,
                                progress=lambda m: err_console.print(f"[dim]{m}[/]"))

    def implementation(self, name: Optional[str], device, upstream_root):
        from portaudit.numerics.registry import build_implementation, get_implementation
        preset = name if name is not None else (None if self.configs else "myfla")
        if preset in ("myfla", "fla") and not _installed(preset):
            what = "pip install myfla" if preset == "myfla" else "fla-core and flash-linear-attention with CUDA and Triton"
            raise UsageError(f"--impl {preset}: the package '{preset}' is not installed here ({what})")
        if name == "fla":
            if device.type != "cuda":
                raise UsageError("--impl fla runs fla's Triton kernels: pass --device cuda on a GPU machine")
            from portaudit.numerics.record import limit_triton_autotune
            limit_triton_autotune()
        if name is not None:
            return get_implementation(name, self.registry, upstream_root=upstream_root)
        if not self.configs:
            return get_implementation("myfla", self.registry, upstream_root=upstream_root)
        specs = [c.implementation_spec() for c in self.configs]
        names = {s.name for s in specs}
        if len(names) > 1:
            raise UsageError(f"the manifests describe different implementations ({', '.join(sorted(names))}); "
                             f"pass --impl or one manifest")
        explicit = [s for s in specs if s.symbols or not s.mirror]
        return build_implementation(explicit[0] if explicit else specs[0], upstream_root)


def _left_out_note(impl, left_out, what: str) -> List[str]:
    if not left_out:
        return []
    apis = ", ".join(f"{a.rsplit('.', 1)[-1]} ({n})" for a, n in sorted(left_out.items()))
    return [f"not run: {impl.name} does not map these APIs, so the {what} that call them were left out "
            f"(count in brackets): {apis}"]


def _resolution_notes(impl) -> List[str]:
    """Where a declared port path resolved to an object of another package (e.g. transformers
    swapping in fla's kernels when fla is installed), say so: the numbers are that package's."""
    notes = []
    spec = getattr(impl, "spec", None)
    for api, actual in sorted(getattr(impl, "resolved", {}).items()):
        declared = spec.port_path(api)
        if actual.split(".", 1)[0] != declared.split(".", 1)[0]:
            notes.append(f"{api}: {declared} resolved to {actual}; the results are that package's")
    return notes


def _emit(rows, fmt: str, output: Optional[Path], title: str, notes: List[str], setup: "_Setup",
          implementation) -> None:
    from portaudit.numerics import results
    meta = {"title": title, "implementation": implementation.describe(), "registry": setup.registry.name,
            "precision": implementation.precision}
    if fmt == "table":
        if output is not None:
            write_output(results.to_markdown(rows, title, notes), output)
        results.print_rich(rows, console=console, title=title, notes=notes)
    elif fmt == "json":
        write_output(results.to_json(rows, meta, notes) + "\n", output)
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
    layer: Annotated[Optional[str], typer.Option("--layer", help="Only the invariants of this layer's closure "
                                                 "(KimiDeltaAttention, GatedDeltaNet, RWKV7Attention...).")] = None,
    manifest: NumericsManifestOpt = None,
    impl: ImplOpt = None,
    device: DeviceOpt = "cpu",
    quick: Annotated[bool, typer.Option("--quick", help="First case(s) of every invariant (< 60 s).")] = False,
    hypothesis: Annotated[int, typer.Option("--hypothesis", help="Add N randomly drawn delta-rule cases.")] = 0,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for --hypothesis (printed).")] = None,
    fmt: FormatOpt = "table",
    output: OutputOpt = None,
    upstream: UpstreamOpt = None,
    upstream_path: UpstreamPathOpt = None,
    registry: RegistryOpt = None,
    list_ops: Annotated[bool, typer.Option("--list", help="List the known ops and invariants, then exit.")] = False,
) -> None:
    """Run named numeric invariants of the upstream's API against an implementation."""
    with cli_errors():
        _require_torch("invariants")
        from portaudit.numerics import invariants as engine
        from portaudit.numerics.results import summary
        from portaudit.numerics.tolerances import ToleranceTable

        _check_format(fmt)
        setup = _Setup(manifest, registry)
        invs = setup.registry.invariants()
        if list_ops:
            for group in engine.known_ops(invs):
                names = sorted({i.name for i in invs if i.group == group})
                console.print(f"[bold]{group}[/]: {', '.join(names)}")
            return
        if hypothesis < 0:
            raise UsageError("--hypothesis must be >= 0")
        if setup.symbols:
            def listed_api(a: str) -> bool:   # defining module or package re-export
                return a in setup.symbols or a.rsplit(".", 2)[0] + "." + a.rsplit(".", 1)[1] in setup.symbols
            invs = [i for i in invs if all(listed_api(a) for a in i.apis)]
            if not invs:
                raise UsageError("the manifest lists no symbol that a numeric invariant covers")
        if not op and not layer and not manifest:
            raise UsageError("name what to check: --op OP (or --op all), --layer LAYER or --manifest FILE; "
                             "--list shows the ops")
        invs = engine.select(invs, op, layer)
        dev = _device(device)
        root = setup.upstream_root(upstream, upstream_path)
        implementation = setup.implementation(impl, dev, root)
        invs, left_out = engine.split_provided(implementation, invs)
        notes = _resolution_notes(implementation) + _left_out_note(implementation, left_out, "invariants")
        if not invs:
            raise UsageError(f"{implementation.name} maps none of the APIs the selected invariants call")
        if hypothesis and seed is None:
            seed = random.SystemRandom().randrange(2 ** 31)
        if hypothesis:
            notes.append(f"--hypothesis {hypothesis} drew its cases with --seed {seed} (pass it to replay)")
            err_console.print(f"hypothesis seed: {seed}")
        table = ToleranceTable(setup.registry.invariant_rules(implementation.precision), setup.overrides)
        total = sum(len(i.cases[:i.quick] if quick else i.cases) for i in invs)
        with _Bar(total, f"invariants ({implementation.name})") as bar:
            rows = engine.run_invariants(implementation, root, invs, setup.registry, dev, quick=quick,
                                         hypothesis=hypothesis, seed=seed or 0, table=table, progress=bar)
        for t in table.unneeded_overrides():
            notes.append(f"tolerance override {t.op}/{t.output}/{t.dtype}={t.value:g} from {t.source} is no "
                         f"longer needed (every comparison passed the built-in tolerance)")
        _emit(rows, fmt, output, f"invariants: {implementation.name}", notes, setup, implementation)
        s = summary(rows)
        if s["fail"] + s["error"] + s["missing"]:
            raise typer.Exit(1)


golden_app = typer.Typer(name="golden", no_args_is_help=True,
                         help="Golden fixtures recorded from the real upstream on a GPU.")


@golden_app.command("record")
def golden_record(
    out: Annotated[Path, typer.Option("--out", help="Fixture directory to write.")],
    upstream: UpstreamOpt = None,
    impl: Annotated[str, typer.Option("--impl", help="Implementation that records: fla (default; CUDA + "
                                      "Triton), myfla, ref or an implementation YAML file.")] = "fla",
    device: DeviceOpt = "cuda",
    cases: Annotated[Optional[str], typer.Option("--cases", help="Comma-separated substrings of case names.")] = None,
    archive: Annotated[Optional[Path], typer.Option("--archive", help="Rewrite this .tar of --out after each "
                                                    "case (a killed run keeps what was done).")] = None,
    upstream_path: UpstreamPathOpt = None,
    safetensors: Annotated[bool, typer.Option("--safetensors", help="Write .safetensors files.")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Run the upstream (real fla: CUDA + Triton) on the declared cases and write fixtures."""
    with cli_errors():
        _require_torch("golden record")
        from portaudit.numerics.golden_cases import find_cases
        from portaudit.numerics.record import record

        setup = _Setup(None, registry)
        dev = _device(device)
        root = None
        if impl not in ("fla", "myfla"):
            root = setup.upstream_root(upstream, upstream_path)
        else:
            setup.upstream = (upstream or ",".join(setup.registry.upstream)).split(",")
        implementation = setup.implementation(impl, dev, root)
        selected = find_cases(setup.registry.golden_cases(), cases)
        if not selected:
            raise UsageError(f"no golden case matches '{cases}'")
        writer = record(implementation, out, dev, selected, setup.upstream, archive,
                        log=lambda m: err_console.print(m, markup=False), use_safetensors=safetensors)
        bad = [n for n, r in writer.cases.items() if r.status != "ok"]
        console.print(f"wrote {len(writer.cases) - len(bad)} cases to {out}" + (f"; {len(bad)} failed upstream: "
                                                                                 f"{', '.join(bad)}" if bad else ""))


@golden_app.command("check")
def golden_check(
    fixtures: Annotated[Optional[Path], typer.Option("--fixtures", help="Fixture directory, or PACKAGE:golden "
                        "for the fixtures an installed port ships. Default: ./tests/fixtures/golden, else "
                        "myfla:golden.")] = None,
    impl: ImplOpt = None,
    device: DeviceOpt = "cpu",
    cases: Annotated[Optional[str], typer.Option("--cases", help="Comma-separated substrings of case names.")] = None,
    fmt: FormatOpt = "table",
    output: OutputOpt = None,
    upstream: UpstreamOpt = None,
    upstream_path: UpstreamPathOpt = None,
    manifest: NumericsManifestOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Run an implementation on recorded inputs and compare with the recorded upstream outputs."""
    with cli_errors():
        _require_torch("golden check")
        fixtures = _fixtures_dir(fixtures)
        from portaudit.numerics.fixtures import read_fixtures
        from portaudit.numerics.golden import check_golden
        from portaudit.numerics.results import summary
        from portaudit.numerics.tolerances import ToleranceTable

        _check_format(fmt)
        fs = read_fixtures(fixtures)   # validate before anything expensive
        setup = _Setup(manifest, registry)
        dev = _device(device)
        preset_without_tree = impl in ("myfla", "fla") or (impl is None and not setup.configs)
        root = None if preset_without_tree else setup.upstream_root(upstream, upstream_path)
        implementation = setup.implementation(impl, dev, root)
        n = len(fs.cases)
        left_out: dict = {}
        table = ToleranceTable(setup.registry.golden_rules(), setup.overrides)
        with _Bar(n, f"golden ({implementation.name})") as bar:
            rows = check_golden(implementation, fixtures, setup.registry, dev, cases, table=table, progress=bar,
                                left_out=left_out)
        env = fs.meta.get("environment", {})
        notes = [f"fixtures: {fixtures} recorded with fla-core {env.get('fla-core')} on {env.get('gpu')} "
                 f"(torch {env.get('torch')}, triton {env.get('triton')})"]
        notes += _resolution_notes(implementation) + _left_out_note(implementation, left_out, "golden cases")
        for t in table.unneeded_overrides():
            notes.append(f"tolerance override {t.op}/{t.output}/{t.dtype}={t.value:g} from {t.source} is no "
                         f"longer needed (every comparison passed the built-in tolerance)")
        _emit(rows, fmt, output, f"golden: {implementation.name}", notes, setup, implementation)
        s = summary(rows)
        if s["fail"] + s["error"] + s["missing"]:
            raise typer.Exit(1)
