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
import operator
import sys
import time
from pathlib import Path
from typing import Any

from emdm.config import config_dict
from emdm.errors import cli
from emdm.experiment import Outputs, parse_run
from emdm.provenance import write_results
from emdm.publish import check_writable


@dataclasses.dataclass(frozen=True)
class Row:
    r"""One hyperparameter: its label, the config attributes that hold it (one, or several
    read as a tuple), the paper code's value, where protocols.md states it, and why emdm
    differs, if it does."""

    label: str
    fields: str
    paper: Any
    source: str
    differs: str = ""

    def ours(self, cfg: Any) -> Any:
        return operator.attrgetter(*self.fields.split())(cfg)


def rows(fields: list[tuple[str, str]], paper: list, source: str, **differs: str) -> list[Row]:
    r"""The rows of `fields` ((label, attributes) pairs) with the paper code's values in the
    same order, stated in `source`; `differs` gives the reason of a difference, keyed by the
    row's first attribute with `_` for `.` (e.g. `start_cg_iterations`)."""
    return [Row(label, attrs, value, source, differs.get(attrs.split()[0].replace(".", "_"), ""))
            for (label, attrs), value in zip(fields, paper, strict=True)]  # fmt: skip


NET = [
    ("U-Net channels per level", "net.hid_channels"),
    ("U-Net residual blocks per level", "net.hid_blocks"),
    ("attention levels, heads", "net.attention net.heads"),
    ("embedding features, dropout", "net.emb_features net.dropout"),
]
START = [
    ("q_0: observations fitted", "start.observations"),
    ("q_0: PPCA rank", "start.rank"),
    ("q_0: Monte-Carlo EM iterations", "start.iterations"),
    ("q_0: sampler, steps", "start.sampler start.steps"),
    ("q_0: CG iterations", "start.cg_iterations"),
]
LAPS = [
    ("EM laps", "em.iterations"),
    ("E-step: sampler, steps", "em.sampler em.steps"),
    ("E-step: covariance V_t", "em.covariance"),
    ("E-step: CG iterations", "em.cg_iterations"),
    ("E-step: batch, CG dot products", "em.sample_batch em.dot"),
    ("E-step: start mean (PPCA of the first samples)", "em.mean_samples"),
    ("M-step: Adam steps per lap", "em.train_steps"),
    ("M-step: batch size", "em.batch_size"),
    ("M-step: learning rate, constant", "em.lr em.lr_end"),
    ("M-step: gradient clip, EMA decay", "em.clip em.ema"),
    ("M-step: flip, shift (px)", "em.flip em.shift"),
]

# protocols §4 (the paper's CIFAR-10 code, experiments/cifar/)
TABLE2 = [
    *rows([("train observations (batches of 256, drop last)", "observations"),
           ("pixels deleted (%)", "percents"), ("observation noise σ_y", "sigma_y")],
          [49920, (25.0, 50.0, 75.0), 1e-3], "§4.1, §4.3"),
    *rows(NET, [(128, 256, 384), (5, 5, 5), ((1,), 4), (256, 0.1)], "§4.2"),
    *rows(START, [16384, 64, 16, ("ddim", 256), "until rtol 1e-3"], "§4.3", start_cg_iterations=(
        "a fixed count, no host synchronization; the paper's CG stops at rtol 1e-3, uncapped")),
    *rows(LAPS, [32, ("ddpm", 256), "tweedie", 1, (256, "batch"), 16384, 49920, 256,
                 (2e-4, 2e-4), (1.0, 0.9999), (True, 1)], "§4.3"),
    *rows([("evaluation: samples, DDIM steps", "eval_samples eval_steps")], [(50176, 256)],
          "§4.4"),
]  # fmt: skip

# protocols §5 (the paper's fastMRI code, experiments/fastmri/)
TABLE3 = [
    *rows([("slice size (pixels)", "size"), ("acceleration R of the training masks", "R"),
           ("observation noise σ_y", "sigma_y"), ("posterior samples per observation",
           "duplicate"), ("pixel unshuffle, U-Net channels", "net.pixel_shuffle net.channels")],
          [320, 6.0, 1e-2, 2, (4, 16)], "§5.1-5.3"),
    *rows(NET, [(128, 256, 384, 512), (3, 3, 3, 3), ((3,), 4), (256, 0.1)], "§5.2"),
    *rows(START, [4096, 64, 16, ("ddim", 256), 5], "§5.3"),
    *rows(LAPS, [16, ("ddpm", 64), "tweedie", 3, (256, "batch"), 16384, "64 epochs", 256,
                 (1e-4, 1e-4), (1.0, 0.999), (True, 4)], "§5.3", em_train_steps=(
        "15 000 steps: 64 epochs of about 2 × 30 000 slices in batches of 256")),
    *rows([("evaluation: accelerations", "accelerations"),
           ("evaluation: sampler steps, CG iterations", "eval_steps eval_cg")],
          [(4.0, 8.0, 16.0, 32.0), (64, 5)], "§5.4"),
]  # fmt: skip


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


def main(argv: list[str] | None = None) -> int:
    paper = Tables23Config(name="tables23")  # it reads configs, computes nothing: no smoke
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
