r"""Tables 2 and 3: the hyperparameters of the CIFAR-10 and the MRI experiments, read from the
typed paper configurations of `reproduce/table1.py` and `reproduce/fig6.py`, not typed by hand.

Beside each of emdm's values stands the value of the paper's own code (protocols §4 and §5,
transcribed below with the section they come from), and a mark where the two differ, with the
reason. `tests/test_figures.py` fails if a paper configuration drifts from these values
without the difference being declared here.

    python reproduce/tables23.py        # a second

Writes results/table2.md, results/table3.md and results/tables23.{csv,json}.
"""

import dataclasses
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emdm.config import PLAIN_NAME, config_dict, option
from emdm.errors import cli
from emdm.experiment import Outputs, parse_run
from emdm.provenance import write_results
from emdm.publish import check_writable


@dataclasses.dataclass(frozen=True)
class Row:
    r"""One hyperparameter: its label, how to read it from a paper configuration, the paper
    code's value (with where it is stated), and why emdm differs, if it does."""

    label: str
    ours: Callable[[Any], Any]
    paper: Any
    source: str
    differs: str = ""


# protocols §4 (the paper's CIFAR-10 code, experiments/cifar/)
TABLE2 = [
    Row("train observations (batches of 256, drop last)", lambda c: c.observations, 49920, "§4.3"),
    Row("pixels deleted (%)", lambda c: c.percents, (25.0, 50.0, 75.0), "§4.3"),
    Row("observation noise σ_y", lambda c: c.sigma_y, 1e-3, "§4.1"),
    Row("U-Net channels per level", lambda c: c.net.hid_channels, (128, 256, 384), "§4.2"),
    Row("U-Net residual blocks per level", lambda c: c.net.hid_blocks, (5, 5, 5), "§4.2"),
    Row("attention levels (heads)", lambda c: (c.net.attention, c.net.heads), ((1,), 4), "§4.2"),
    Row("embedding features", lambda c: c.net.emb_features, 256, "§4.2"),
    Row("dropout", lambda c: c.net.dropout, 0.1, "§4.2"),
    Row("q_0: observations fitted", lambda c: c.start.observations, 16384, "§4.3"),
    Row("q_0: PPCA rank", lambda c: c.start.rank, 64, "§4.3"),
    Row("q_0: Monte-Carlo EM iterations", lambda c: c.start.iterations, 16, "§4.3"),
    Row("q_0: sampler, steps", lambda c: (c.start.sampler, c.start.steps), ("ddim", 256), "§4.3"),
    Row(
        "q_0: CG iterations",
        lambda c: c.start.cg_iterations,
        "until rtol 1e-3",
        "§4.3",
        "a fixed count (no host synchronization); 32 reach rtol 1e-3 on the fit's systems",
    ),
    Row("EM laps", lambda c: c.em.iterations, 32, "§4.3"),
    Row("E-step: sampler, steps", lambda c: (c.em.sampler, c.em.steps), ("ddpm", 256), "§4.3"),
    Row("E-step: covariance V_t", lambda c: c.em.covariance, "tweedie", "§4.3"),
    Row("E-step: CG iterations", lambda c: c.em.cg_iterations, 1, "§4.3"),
    Row(
        "E-step: batch, CG dot products",
        lambda c: (c.em.sample_batch, c.em.dot),
        (256, "batch"),
        "§4.3",
    ),
    Row(
        "E-step: start mean (PPCA of the first samples)",
        lambda c: c.em.mean_samples,
        16384,
        "§4.3",
    ),
    Row("M-step: Adam steps per lap (256 epochs)", lambda c: c.em.train_steps, 49920, "§4.3"),
    Row("M-step: batch size", lambda c: c.em.batch_size, 256, "§4.3"),
    Row(
        "M-step: learning rate (constant)", lambda c: (c.em.lr, c.em.lr_end), (2e-4, 2e-4), "§4.3"
    ),
    Row("M-step: gradient clip", lambda c: c.em.clip, 1.0, "§4.3"),
    Row("M-step: EMA decay", lambda c: c.em.ema, 0.9999, "§4.3"),
    Row("M-step: flip, shift (px)", lambda c: (c.em.flip, c.em.shift), (True, 1), "§4.3"),
    Row(
        "evaluation: samples, DDIM steps",
        lambda c: (c.eval_samples, c.eval_steps),
        (50176, 256),
        "§4.4",
    ),
]

# protocols §5 (the paper's fastMRI code, experiments/fastmri/)
TABLE3 = [
    Row("slice size (pixels)", lambda c: c.size, 320, "§5.1"),
    Row("acceleration R of the training masks", lambda c: c.R, 6.0, "§5.1"),
    Row("observation noise σ_y", lambda c: c.sigma_y, 1e-2, "§5.1"),
    Row("posterior samples per observation", lambda c: c.duplicate, 2, "§5.3"),
    Row("pixel unshuffle", lambda c: c.net.pixel_shuffle, 4, "§5.2"),
    Row("U-Net channels (after unshuffle)", lambda c: c.net.channels, 16, "§5.2"),
    Row("U-Net channels per level", lambda c: c.net.hid_channels, (128, 256, 384, 512), "§5.2"),
    Row("U-Net residual blocks per level", lambda c: c.net.hid_blocks, (3, 3, 3, 3), "§5.2"),
    Row("attention levels (heads)", lambda c: (c.net.attention, c.net.heads), ((3,), 4), "§5.2"),
    Row(
        "embedding features, dropout",
        lambda c: (c.net.emb_features, c.net.dropout),
        (256, 0.1),
        "§5.2",
    ),
    Row("q_0: observations fitted", lambda c: c.start.observations, 4096, "§5.3"),
    Row("q_0: PPCA rank", lambda c: c.start.rank, 64, "§5.3"),
    Row("q_0: Monte-Carlo EM iterations", lambda c: c.start.iterations, 16, "§5.3"),
    Row("q_0: sampler, steps", lambda c: (c.start.sampler, c.start.steps), ("ddim", 256), "§5.3"),
    Row("q_0: CG iterations", lambda c: c.start.cg_iterations, 5, "§5.3"),
    Row("EM laps", lambda c: c.em.iterations, 16, "§5.3"),
    Row("E-step: sampler, steps", lambda c: (c.em.sampler, c.em.steps), ("ddpm", 64), "§5.3"),
    Row("E-step: covariance V_t", lambda c: c.em.covariance, "tweedie", "§5.3"),
    Row("E-step: CG iterations", lambda c: c.em.cg_iterations, 3, "§5.3"),
    Row(
        "E-step: batch, CG dot products",
        lambda c: (c.em.sample_batch, c.em.dot),
        (256, "batch"),
        "§5.3",
    ),
    Row(
        "E-step: start mean (PPCA of the first samples)",
        lambda c: c.em.mean_samples,
        16384,
        "§5.3",
    ),
    Row(
        "M-step: Adam steps per lap",
        lambda c: c.em.train_steps,
        "64 epochs",
        "§5.3",
        "15 000 steps: 64 epochs of about 2 × 30 000 slices in batches of 256",
    ),
    Row("M-step: batch size", lambda c: c.em.batch_size, 256, "§5.3"),
    Row(
        "M-step: learning rate (constant)", lambda c: (c.em.lr, c.em.lr_end), (1e-4, 1e-4), "§5.3"
    ),
    Row("M-step: gradient clip", lambda c: c.em.clip, 1.0, "§5.3"),
    Row("M-step: EMA decay", lambda c: c.em.ema, 0.999, "§5.3"),
    Row("M-step: flip, shift (px)", lambda c: (c.em.flip, c.em.shift), (True, 4), "§5.3"),
    Row("evaluation: accelerations", lambda c: c.accelerations, (4.0, 8.0, 16.0, 32.0), "§5.4"),
    Row(
        "evaluation: sampler steps, CG iterations",
        lambda c: (c.eval_steps, c.eval_cg),
        (64, 5),
        "§5.4",
    ),
]


def _preset(script: str) -> Any:
    r"""The `PAPER` preset of `reproduce/<script>.py`, loaded by path (a sibling script, run
    from anywhere)."""
    spec = importlib.util.spec_from_file_location(
        f"_{script}", Path(__file__).with_name(f"{script}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PAPER


TABLES = {
    "table2": ("Table 2: CIFAR-10 (reproduce/table1.py)", TABLE2, _preset("table1")),
    "table3": ("Table 3: accelerated MRI (reproduce/fig6.py)", TABLE3, _preset("fig6")),
}


def compare(rows: list[Row], cfg: Any) -> list[dict[str, Any]]:
    r"""Each row's value in `cfg`, the paper code's, and whether they differ."""
    out = []
    for row in rows:
        ours = row.ours(cfg)
        same = _same(ours, row.paper)
        out.append({"hyperparameter": row.label, "emdm": ours, "paper_code": row.paper,
                    "source": row.source, "same": same, "note": row.differs})  # fmt: skip
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    numbers = all(isinstance(v, float | int) and not isinstance(v, bool) for v in (a, b))
    return a == b and (numbers or type(a) is type(b))


def markdown(title: str, rows: list[dict[str, Any]]) -> str:
    r"""The table as Markdown; "≠" marks a difference, with its reason."""
    lines = [f"# {title}", "", "| hyperparameter | emdm | paper's code | |", "|---|---|---|---|"]
    for r in rows:
        mark = "" if r["same"] else f"≠ {r['note']}"
        lines.append(f"| {r['hyperparameter']} | {r['emdm']} | {r['paper_code']} "
                     f"({r['source']}) | {mark} |")  # fmt: skip
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Tables23Config(Outputs):
    r"""Tables 2 and 3: the hyperparameters of the paper configurations."""

    name: str = option("tables23", "name of the result files", check=PLAIN_NAME)


def main(argv: list[str] | None = None) -> int:
    paper = Tables23Config()
    cfg = parse_run(Tables23Config, argv, quick=paper, paper=paper, prog="reproduce/tables23.py")
    if cfg is None:  # --dry-run
        return 0
    out, start = check_writable(cfg.out), time.perf_counter()
    rows, texts = [], {}
    for name, (title, spec, preset) in TABLES.items():
        compared = compare(spec, preset)
        texts[f"{name}.md"] = markdown(title, compared)
        rows += [{"table": name, "metric": r["hyperparameter"], "value": str(r["emdm"]),
                  "paper": str(r["paper_code"]), "same": r["same"]} for r in compared]  # fmt: skip
    write_results(cfg.name, rows, config_dict(cfg), wall_time=time.perf_counter() - start,
                  out_dir=out, quick=False, device="cpu", texts=texts)  # fmt: skip
    if not cfg.quiet:
        print(f"wrote {', '.join(str(Path(out) / f) for f in texts)}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
