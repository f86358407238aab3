# Snakemake adapter: train the network for one EM round or the fully supervised baseline (lidarlift.model.train).
from pathlib import Path

from lidarlift.model.devices import leased_gpus
from lidarlift.workflow import job_logging

with job_logging(snakemake.log[0], snakemake.threads):
    out_dir = Path(snakemake.output.model).parent
    full = snakemake.rule == "train_full"
    spec = {
        "train": snakemake.params.train,
        "label_space": snakemake.params.labels["space"],
        "manifest": snakemake.input.manifest,
        "round": "full" if full else int(snakemake.wildcards.round),
        "label_source": "ground_truth" if full else "pseudolabels",
        "shards": list(snakemake.params.shards),
        "stores": {} if full else dict(zip(snakemake.params.shards, snakemake.input.pseudolabels)),
        "model": snakemake.output.model,
        "metrics": snakemake.output.metrics,
        "out_dir": str(out_dir),  # checkpoint.pt (resume) lives here, undeclared so a failed job keeps it
        "tensorboard": str(out_dir / "tensorboard"),
        "threads": snakemake.threads,
    }
    # lease first: CUDA must not initialise before CUDA_VISIBLE_DEVICES names the leased devices
    with leased_gpus(int(snakemake.params.train["gpus"])) as processes:
        from lidarlift.model.train import train_job

        train_job(spec, processes=processes)
