import dataclasses

import pytest
import torch

from emdm.config import config_dict, config_parser, parse_config


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
