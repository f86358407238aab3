# Snakemake adapter: score every model and pseudo-label round, cross-check with the devkit (lidarlift.evaluate.run.evaluate).
from pathlib import Path

from lidarlift.evaluate.run import EvaluateInputs, evaluate
from lidarlift.workflow import job_logging, write_json

with job_logging(snakemake.log[0], snakemake.threads):
    stores = snakemake.params.stores
    inputs = EvaluateInputs(
        network={int(r): {s: Path(p) for s, p in d.items()} for r, d in stores["network"].items()},
        full={s: Path(p) for s, p in stores["full"].items()},
        pseudolabels={int(r): {s: Path(p) for s, p in d.items()} for r, d in stores["pseudolabels"].items() if d},
    )
    metrics = evaluate(snakemake.input.manifest, inputs, snakemake.params.evaluate,
                       devkit_dir=snakemake.output.devkit, confusion_path=snakemake.output.confusion)
    Path(snakemake.output.devkit).mkdir(parents=True, exist_ok=True)
    write_json(snakemake.output.metrics, metrics)
