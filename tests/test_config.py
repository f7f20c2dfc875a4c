import dataclasses
import math
import re

import pytest
import torch

from emdm.config import (
    DEVICE,
    FINITE,
    NONNEGATIVE,
    PLAIN_NAME,
    POSITIVE,
    Checked,
    at_least,
    check_fields,
    config_dict,
    config_parser,
    interval,
    option,
    parse_config,
    parse_scaled,
)


@dataclasses.dataclass
class Config:
    seed: int = 0
    learning_rate: float = 1e-3
    name: str = "run"
    quick: bool = False
    sizes: tuple[int, ...] = (1, 2)
    method: str = dataclasses.field(
        default="a", metadata={"help": "the method", "choices": ("a", "b")}
    )

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")


def test_flags_generated():
    parser = config_parser(Config)
    text = parser.format_help()
    for flag in ("--seed", "--learning-rate", "--name", "--quick", "--no-quick", "--sizes"):
        assert flag in text
    assert "the method" in text


def test_defaults():
    assert parse_config(Config, []) == Config()


def test_values_are_typed():
    cfg = parse_config(Config, ["--seed", "3", "--learning-rate", "0.5", "--name", "x"])
    assert cfg.seed == 3 and isinstance(cfg.seed, int)
    assert cfg.learning_rate == 0.5 and isinstance(cfg.learning_rate, float)
    assert cfg.name == "x"


def test_bool_flags():
    assert parse_config(Config, ["--quick"]).quick is True
    assert parse_config(Config, ["--quick", "--no-quick"]).quick is False


def test_tuple_flags():
    cfg = parse_config(Config, ["--sizes", "4", "5", "6"])
    assert cfg.sizes == (4, 5, 6)
    assert config_dict(cfg)["sizes"] == (4, 5, 6)


@pytest.mark.parametrize(
    "argv",
    [
        ["--seed", "1.5"],
        ["--learning-rate", "fast"],
        ["--sizes", "1", "x"],
        ["--sizes"],
        ["--method", "c"],
        ["--unknown", "1"],
        ["--seed", "-1"],
    ],
)
def test_bad_values_error(argv, capsys):
    with pytest.raises(SystemExit) as error:
        parse_config(Config, argv)
    assert error.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_not_a_dataclass():
    with pytest.raises(ValueError, match="dataclass"):
        config_parser(dict)


def test_field_without_default():
    @dataclasses.dataclass
    class Bad:
        x: int

    with pytest.raises(ValueError, match="default"):
        config_parser(Bad)


def test_check_device():
    from emdm.config import check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="such as 'cpu' or 'cuda'"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            check_device("cuda")


# Declared constraints (emdm.config.option, Checked)


@dataclasses.dataclass
class Declared(Checked):
    r"""A config whose fields declare their help and constraints."""

    steps: int = option(8, "sampler steps", check=POSITIVE)
    lr: float = option(1e-3, "learning rate", check=POSITIVE)
    ema: float = option(0.0, "EMA decay; 0: none", check=interval(0, 1))
    sizes: tuple[int, ...] = option((1, 2), "sizes of the levels", check=at_least(1))
    sampler: str = option("a", "the sampler", choices=("a", "b"))
    methods: tuple[str, ...] = option(("a",), "methods to compare", choices=("a", "b"))
    name: str = option("run", "name of the result files", check=PLAIN_NAME)
    percent: float = option(50.0, "% of pixels deleted", check=interval(0, 100))
    tags: list[str] = option(help="free tags", default_factory=lambda: ["x"])


@dataclasses.dataclass
class CrossChecked(Declared):
    r"""A subclass whose own checks involve several fields."""

    low: float = option(0.0, "lower end", check=FINITE)

    def __post_init__(self):
        super().__post_init__()
        if self.low >= self.lr:
            raise ValueError(f"low must be below lr, got {self.low} >= {self.lr}")


@pytest.mark.parametrize(
    "check, good, bad",
    [
        (POSITIVE, [1, 0.5, 1e-300, 10**6], [0, -1, -0.0, math.nan, math.inf, -math.inf]),
        (NONNEGATIVE, [0, 0.0, 3, 2.5], [-1, -1e-12, math.nan, math.inf]),
        (FINITE, [0, -3, 1e300], [math.nan, math.inf, -math.inf]),
        (at_least(2), [2, 2.5, 100], [1.999, 0, math.nan, math.inf]),
        (interval(0, 1), [0, 0.5, 0.999], [1, -0.1, math.nan]),
        (interval(0, 1, closed="right"), [1, 1e-9], [0, 1.1]),
        (interval(0, 1, closed="both"), [0, 1], [-1e-9, 1 + 1e-9, math.inf]),
        (interval(0, 1, closed="neither"), [0.5], [0, 1]),
        (PLAIN_NAME, ["demo", "fig1_quick", "a.b"], ["", ".", "..", "a/b", "/abs", "out/"]),
    ],
)
def test_checks_accept_and_refuse(check, good, bad):
    for value in good:
        check("x", value)
    for value in bad:
        with pytest.raises(ValueError, match=f"x must be {re.escape(check.text)}"):
            check("x", value)


@pytest.mark.parametrize("value", [True, "1", None, [1, "a"]])
def test_numeric_checks_refuse_what_is_not_a_number(value):
    with pytest.raises(ValueError, match="x must be a finite number > 0"):
        POSITIVE("x", value)


def test_check_texts():
    assert at_least(1).text == "a finite number >= 1"
    assert interval(0, 100).text == "in [0, 100)"
    assert interval(0.5, 1, closed="right").text == "in (0.5, 1]"
    assert interval(0, 1, closed="both").text == "in [0, 1]"
    assert interval(0, 1, closed="neither").text == "in (0, 1)"
    with pytest.raises(ValueError, match="closed must be"):
        interval(0, 1, closed="open")


def test_check_message_names_field_constraint_and_value():
    with pytest.raises(ValueError, match=r"^steps must be a finite number > 0, got 0$"):
        POSITIVE("steps", 0)
    # a tuple is checked per element, and the message shows the whole tuple
    sizes = (1, 0, 3)
    with pytest.raises(
        ValueError, match=r"^each value of sizes must be .* >= 1, got \(1, 0, 3\)$"
    ):
        at_least(1)("sizes", sizes)
    at_least(1)("sizes", (1, 2, 3))
    at_least(1)("sizes", ())  # no element to refuse


def test_option_metadata():
    field = option(3, "how many", check=POSITIVE, choices=[1, 2, 3])
    assert field.default == 3
    assert dict(field.metadata) == {"help": "how many", "check": POSITIVE, "choices": (1, 2, 3)}
    assert dict(option(0, "plain").metadata) == {"help": "plain"}
    tags = dataclasses.fields(Declared)[-1]
    assert tags.default_factory() == ["x"] and tags.metadata["help"] == "free tags"


def test_checked_accepts_the_defaults_and_refuses_each_bad_field():
    assert Declared().steps == 8 and Declared().tags == ["x"]
    bad = {
        "steps": (0, "steps must be a finite number > 0, got 0"),
        "lr": (math.nan, "lr must be a finite number > 0, got nan"),
        "ema": (1.0, r"ema must be in \[0, 1\), got 1.0"),
        "sizes": ((2, 0), r"each value of sizes must be a finite number >= 1, got \(2, 0\)"),
        "sampler": ("c", r"sampler must be one of \('a', 'b'\), got 'c'"),
        "methods": (("a", "c"), r"methods must be one of \('a', 'b'\), got \('a', 'c'\)"),
        "name": ("a/b", r"name must be a plain file name .*, got 'a/b'"),
    }
    for field, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            Declared(**{field: value})


def test_checked_subclass_checks_fields_then_its_own():
    assert CrossChecked(low=-1.0).low == -1.0
    with pytest.raises(ValueError, match="low must be below lr"):
        CrossChecked(low=1.0)
    with pytest.raises(ValueError, match="steps must be"):  # the fields first
        CrossChecked(steps=-1, low=1.0)
    with pytest.raises(ValueError, match="low must be a finite number"):
        CrossChecked(low=-math.inf)


def test_check_fields_on_a_plain_dataclass():
    @dataclasses.dataclass
    class Plain:
        n: int = option(1, "a count", check=POSITIVE)

    bad = Plain(n=0)  # not Checked: made, but check_fields refuses it
    with pytest.raises(ValueError, match="n must be a finite number > 0, got 0"):
        check_fields(bad)
    check_fields(Plain())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "steps must be a finite number > 0, got 0"),
        (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--sizes", "1", "0"], r"each value of sizes must be a finite number >= 1, got \(1, 0\)"),
        (["--name", "a/b"], "name must be a plain file name"),
        (["--methods", "a", "c"], "invalid choice: 'c'"),
    ],
)
def test_declared_constraints_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        parse_config(Declared, argv)
    assert error.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def _flat(text: str) -> str:
    return " ".join(text.split())  # argparse wraps at the terminal's width


def test_help_shows_each_flags_help_default_and_constraint():
    text = _flat(config_parser(Declared).format_help())
    assert "A config whose fields declare their help and constraints." in text
    for line in (
        "--steps INT sampler steps; must be a finite number > 0 (default: 8)",
        "--lr FLOAT learning rate; must be a finite number > 0 (default: 0.001)",
        "EMA decay; 0: none; must be in [0, 1) (default: 0.0)",
        "sizes of the levels; must be a finite number >= 1 (default: (1, 2))",
        "--sampler {a,b} the sampler (default: a)",
        "name of the result files; must be a plain file name (no folder, not empty) "
        "(default: run)",
        "--percent FLOAT % of pixels deleted; must be in [0, 100) (default: 50.0)",
    ):
        assert line in text


QUICK, PAPER = Declared(steps=2, name="quick"), Declared()


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as error:
        parse_scaled(Declared, argv, quick=QUICK, paper=PAPER, prog="x.py")
    assert error.value.code == 0
    return _flat(capsys.readouterr().out)


def test_parse_scaled_lists_quick_first_with_the_paper_defaults(capsys):
    text = _help(["--help"], capsys)
    options = text[text.index("options:") :]
    flags = re.findall(r"(?<![\w-])--[a-z][\w-]*", options)
    assert flags[0] == "--help" and flags[1] == "--quick"  # -h, --help: argparse's own
    assert "the quick preset" in text and "Defaults shown: the paper preset's" in text
    assert "sampler steps; must be a finite number > 0 (default: 8)" in text
    assert "(default: run)" in text


def test_parse_scaled_quick_help_shows_the_quick_defaults(capsys):
    text = _help(["--quick", "--help"], capsys)
    assert "Defaults shown: the quick preset's" in text
    assert "sampler steps; must be a finite number > 0 (default: 2)" in text
    assert "(default: quick)" in text and "(default: run)" not in text


def test_parse_scaled_presets_and_overrides(capsys):
    assert parse_scaled(Declared, [], quick=QUICK, paper=PAPER) == PAPER
    assert parse_scaled(Declared, ["--quick"], quick=QUICK, paper=PAPER) == QUICK
    cfg = parse_scaled(Declared, ["--steps", "5", "--quick"], quick=QUICK, paper=PAPER)
    assert cfg == dataclasses.replace(QUICK, steps=5)
    with pytest.raises(SystemExit) as error:
        parse_scaled(Declared, ["--quick", "--steps", "0"], quick=QUICK, paper=PAPER)
    assert error.value.code == 2
    assert "steps must be a finite number > 0, got 0" in capsys.readouterr().err


def test_device_check():
    DEVICE("device", "cpu")
    DEVICE("device", "cuda:1")  # a name: whether torch sees it is check_device's business
    for bad in ("gpu0", "", 0):
        with pytest.raises(ValueError, match="device must be a torch device"):
            DEVICE("device", bad)


def _config_classes():
    from bench.cg_ab import CGABConfig
    from bench.em_cost import CostConfig
    from bench.gaussian_start import GaussianStartBenchConfig
    from bench.gpu_check import GPUCheckConfig
    from bench.mmps_cost import Config as MMPSCostConfig
    from bench.mstep import Config as MStepConfig
    from bench.profile import Flags as ProfileFlags
    from bench.threads import Config as ThreadsConfig
    from emdm.em import EMConfig
    from emdm.mmps_check import MMPSCheckConfig
    from emdm.mri import MRIConfig
    from emdm.nn.adm import ADMConfig
    from emdm.prior import GaussianStart, UNetConfig
    from reproduce import fig1, fig2, fig3, fig6, fig7, fig15, table1, table4, table5

    return [
        EMConfig, GaussianStart, UNetConfig, MMPSCheckConfig, ADMConfig, MRIConfig,
        fig1.Fig1Config, fig2.Fig2Config, fig3.Fig3Config, fig6.Fig6Config, fig7.Fig7Config,
        fig15.Fig15Config, table1.Table1Config, table4.Table4Config, table5.Table5Config,
        CostConfig, MMPSCostConfig, GPUCheckConfig, CGABConfig, GaussianStartBenchConfig,
        MStepConfig, ProfileFlags, ThreadsConfig,
    ]  # fmt: skip


def test_every_config_field_declares_its_help():
    pytest.importorskip("triton")  # bench.gpu_check imports the kernels
    for cls in _config_classes():
        assert issubclass(cls, Checked), cls.__name__
        for field in dataclasses.fields(cls):
            help = field.metadata.get("help", "")
            assert help.strip(), f"{cls.__name__}.{field.name} has no help"
            assert not help.startswith("must be"), f"{cls.__name__}.{field.name}"
        cls()  # the defaults meet the constraints


def test_smoke_preset_is_selected_by_its_flag_and_excludes_quick(capsys):

    from emdm.config import parse_scaled

    @dataclasses.dataclass
    class Cfg(Checked):
        steps: int = option(100, "steps", check=POSITIVE)

    presets = dict(quick=Cfg(steps=10), paper=Cfg(steps=1000), smoke=Cfg(steps=1))
    assert parse_scaled(Cfg, ["--smoke"], **presets).steps == 1
    assert parse_scaled(Cfg, ["--smoke", "--steps", "2"], **presets).steps == 2
    assert parse_scaled(Cfg, ["--quick"], **presets).steps == 10
    assert parse_scaled(Cfg, [], **presets).steps == 1000
    with pytest.raises(SystemExit):
        parse_scaled(Cfg, ["--smoke", "--quick"], **presets)
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a script without a smoke preset has no such flag
        parse_scaled(Cfg, ["--smoke"], quick=Cfg(), paper=Cfg())
    assert "unrecognized arguments: --smoke" in capsys.readouterr().err
