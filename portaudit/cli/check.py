"""`portaudit check` and `portaudit gate`: audit manifests, report, gate on the ratchet baseline."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from portaudit.cli.common import (CacheDirOpt, ManifestOpt, NoProgressOpt, PortPathOpt, ProgressDisplay,
                                  UpstreamGitOpt, UpstreamPathOpt, UpstreamRevOpt, cli_errors, console,
                                  default_manifests, err_console, register_inputs, write_output)
from portaudit.errors import EXIT_FINDINGS, EXIT_OK, UsageError
from portaudit.static.baseline import apply_gate, load_baseline, write_baseline
from portaudit.static.manifest import load_manifest
from portaudit.static.reporters import render
from portaudit.static.reporters.report import Report
from portaudit.static.session import Session

# gate's default: the baseline folder beside each manifest (manifests/baseline/ for manifests/*.yaml,
# <package>/audit/baseline/ for the manifests an installed port ships)
BASELINE_BESIDE_MANIFEST = "baseline"


class Format(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"
    junit = "junit"
    sarif = "sarif"
    github = "github"


FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Report format.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report to FILE.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Per-symbol drill-down: each rule's "
                                                                   "result and the finding messages.")]
FailUnderOpt = Annotated[Optional[float], typer.Option(
    "--fail-under", min=0, max=100, help="Exit 1 when a manifest's completeness (%) is under PCT.")]
BaselineOpt = Annotated[Optional[Path], typer.Option(
    "--baseline", help="Ratchet baseline: a directory of <manifest>.json files or one JSON file. "
    "Fail only on regressions against it.")]
UpdateOpt = Annotated[bool, typer.Option("--update-baseline", help="Record the current findings as "
                                         "the new baseline (refuses regressions unless --force).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="With --update-baseline: accept regressions.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-index-cache", help="Re-parse every file.")]
BodiesOpt = Annotated[bool, typer.Option(
    "--bodies", help="Also measure how close each translated definition's body is to the upstream's "
    "(normalised; a figure, not a gate) and print the per-entry table.")]


def run_check(manifest: Optional[List[Path]], upstream_path: Optional[Path], port_path: Optional[Path],
              cache_dir: Optional[Path], fmt: Format, output: Optional[Path], verbose: bool,
              fail_under: Optional[float], baseline: Optional[Path], update_baseline: bool, force: bool,
              no_index_cache: bool, no_progress: bool, upstream_git: Optional[Path] = None,
              bodies: bool = False, upstream_rev: Optional[str] = None, gate_mode: bool = False) -> int:
    progress = ProgressDisplay(enabled=not no_progress)
    with cli_errors(progress):
        if update_baseline and baseline is None and not gate_mode:
            raise UsageError("--update-baseline needs --baseline DIR (e.g. manifests/baseline)")
        paths = default_manifests(manifest)
        manifests = [load_manifest(p) for p in paths]
        if baseline is not None and baseline.suffix == ".json" and len(manifests) > 1:
            raise UsageError(f"--baseline {baseline} is one baseline file but {len(manifests)} manifests are "
                             "checked; pass a directory (one <name>.json per manifest)")
        names = [m.name for m in manifests]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UsageError(f"two manifests are named '{sorted(dup)[0]}'; give them distinct 'name:' keys")
        session = Session(upstream_path=upstream_path, port_path=port_path, cache_dir=cache_dir,
                          progress=progress, use_index_cache=not no_index_cache, upstream_git=upstream_git,
                          body_figures=bodies, upstream_rev=upstream_rev)
        results = [session.audit(m) for m in manifests]
        progress.stop()
        report = Report(results, fail_under=fail_under, verbose=verbose, bodies=bodies)

        def baseline_of(r) -> Path:
            return baseline if baseline is not None else r.manifest.path.parent / BASELINE_BESIDE_MANIFEST

        if baseline is not None or gate_mode:
            if update_baseline:
                for r in results:
                    path, notes = write_baseline(r, baseline_of(r), force=force)
                    err_console.print(f"baseline for {r.manifest.name}: {path} ({r.percent:.1f}%, "
                                      f"{sum(1 for f in r.findings if f.status != 'waived')} finding(s) accepted"
                                      + (f", {len(notes)} fixed" if notes else "") + ")", markup=False)
            for r in results:
                gate_baseline = load_baseline(baseline_of(r), r.manifest.name)
                register_inputs(gate_baseline.path)
                report.gates[r.manifest.name] = apply_gate(r, gate_baseline)
        if fmt == Format.text and output is None:
            from portaudit.static.reporters.text import print_report

            print_report(report, console)
        else:
            write_output(render(report, fmt.value), output)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if fmt == Format.github and summary:
            # inside a GitHub Actions job the annotations come with the markdown job summary
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(render(report, "markdown"))
        return EXIT_FINDINGS if report.failed else EXIT_OK


def check(manifest: ManifestOpt = None, upstream_path: UpstreamPathOpt = None,
          port_path: PortPathOpt = None, cache_dir: CacheDirOpt = None, fmt: FormatOpt = Format.text,
          output: OutputOpt = None, verbose: VerboseOpt = False, fail_under: FailUnderOpt = None,
          baseline: BaselineOpt = None, update_baseline: UpdateOpt = False, force: ForceOpt = False,
          no_index_cache: NoCacheOpt = False, no_progress: NoProgressOpt = False,
          upstream_git: UpstreamGitOpt = None, bodies: BodiesOpt = False,
          upstream_rev: UpstreamRevOpt = None) -> None:
    """Audit the port against one or more manifests (static checks; nothing is imported).

    Exit codes: 0 clean, 1 findings over the gate, 2 usage or manifest error, 3 upstream or
    internal error. Without --baseline/--fail-under any open error finding fails.
    """
    raise typer.Exit(run_check(manifest, upstream_path, port_path, cache_dir, fmt, output, verbose,
                               fail_under, baseline, update_baseline, force, no_index_cache, no_progress,
                               upstream_git, bodies, upstream_rev))


def gate(manifest: ManifestOpt = None, upstream_path: UpstreamPathOpt = None,
         port_path: PortPathOpt = None, cache_dir: CacheDirOpt = None, fmt: FormatOpt = Format.text,
         output: OutputOpt = None, verbose: VerboseOpt = False, fail_under: FailUnderOpt = None,
         baseline: Annotated[Optional[Path], typer.Option(
             "--baseline", help="Baseline directory or file. Default: the baseline/ folder beside each "
             "manifest (manifests/baseline/, or the one an installed port ships with its manifests).")] = None,
         update_baseline: UpdateOpt = False, force: ForceOpt = False,
         no_index_cache: NoCacheOpt = False, no_progress: NoProgressOpt = False,
         upstream_git: UpstreamGitOpt = None, bodies: BodiesOpt = False,
         upstream_rev: UpstreamRevOpt = None) -> None:
    """The CI ratchet: `check` against the baseline beside each manifest, failing only on regressions.

    A regression is a finding not accepted by the baseline or completeness below it. Tighten the
    ratchet after progress with --update-baseline. With an empty baseline at 100% (or none) the
    gate demands a complete port with zero unexplained findings.
    """
    raise typer.Exit(run_check(manifest, upstream_path, port_path, cache_dir, fmt, output, verbose,
                               fail_under, baseline, update_baseline, force, no_index_cache, no_progress,
                               upstream_git, bodies, upstream_rev, gate_mode=True))
