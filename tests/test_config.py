from dataclasses import dataclass, field

import pytest

from leafnet.config import load_config, to_yaml
from leafnet.data.prepare import PrepareConfig
from leafnet.errors import LeafnetError


@dataclass
class Inner:
    depth: int = 2


@dataclass
class Schema:
    name: str = "run"
    lr: float = 0.1
    out: str = "runs/${name}"
    inner: Inner = field(default_factory=Inner)


def test_defaults_file_then_overrides_win_in_that_order(tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("name: fromfile\nlr: 0.5\n")
    config = load_config(Schema, ["--config", str(yaml), "lr=0.01", "inner.depth=5"])
    assert (config.name, config.lr, config.inner.depth, config.out) == ("fromfile", 0.01, 5, "runs/fromfile")
    assert isinstance(config, Schema) and isinstance(config.inner, Inner)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lrr=0.1"], "unknown config key 'lrr'"),
        (["inner.width=3"], "unknown config key 'inner.width'"),
        (["lr=fast"], "bad value for 'lr'"),
        (["--config", "/no/such.yaml"], "config file not found: /no/such.yaml"),
        (["verbose"], "unexpected argument 'verbose'"),
        (["name={a:[b=c]}"], "cannot parse configuration"),
    ],
)
def test_bad_arguments_name_the_key(argv, message):
    with pytest.raises(LeafnetError, match=message):
        load_config(Schema, argv)


def test_prepare_output_follows_the_source():
    assert load_config(PrepareConfig, ["source=kaggle", "input=x"]).output == "data/processed/kaggle"
    assert "size: 128" in to_yaml(PrepareConfig())
