"""Generate the raw synthetic leaves: `leafnet generate [output=...] [synthetic.per_species=16]`.

Writes the Kaggle layout (`images/<id>.png`, `train.csv`, `generator.json`) and nothing else; an identical
set already there is kept. `prepare_data.py source=kaggle input=<output>` prepares it like any Kaggle copy.
"""

from leafnet.config import load_config
from leafnet.data.species import SPECIES
from leafnet.data.synthetic import GenerateConfig, generate_leaf_set
from leafnet.progress import progress_bar


def main(argv: list[str]) -> None:
    config = load_config(GenerateConfig, argv)
    config.validate()
    print(f"synthetic leaves: {len(SPECIES)} species x {config.synthetic.per_species} images -> {config.output}")
    generate_leaf_set(
        config.output,
        config.synthetic,
        progress=lambda items: progress_bar(items, desc="generate", unit="img"),
        workers=config.workers,
    )


CONFIG = GenerateConfig  # the options and their defaults (`leafnet generate --help` lists them)
