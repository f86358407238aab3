# Snakemake adapter: train the network for one EM round or the fully supervised baseline (lidarlift.model.train).
from pathlib import Path

from lidarlift.gpu import job_gpus
from lidarlift.workflow import job_logging, runtime_settings

with job_logging(snakemake.log[0], snakemake.threads):
    out_dir = Path(snakemake.output.model).parent
    full = snakemake.rule == "train_full"
    spec = {
        "train": {**snakemake.params.train, **runtime_settings(snakemake, "train")},
        "label_space": snakemake.params.labels["space"],
        "manifest": snakemake.input.manifest,
        "round": "full" if full else int(snakemake.wildcards.round),
        "label_source": "ground_truth" if full else "pseudolabels",
        "shards": list(snakemake.params.shards),
        "stores": {} if full else dict(zip(snakemake.params.shards, snakemake.input.pseudolabels)),
        # rule train with temporal.enabled: <results>/temporal/r<k>/<shard>.zarr of every train shard
        "temporal": {Path(p).name.removesuffix(".zarr"): p for p in snakemake.input.get("temporal", [])},
        # rule train_keyframes: as many steps as rule train with the temporal sweeps (temporal.compare: steps)
        "steps_of_temporal": (snakemake.params.get("temporal") or {}).get("compare") == "steps",
        "model": snakemake.output.model,
        "metrics": snakemake.output.metrics,
        "out_dir": str(out_dir),  # checkpoint.pt (resume) lives here, undeclared so a failed job keeps it
        "tensorboard": str(out_dir / "tensorboard"),
        "threads": snakemake.threads,
    }
    # lease first: CUDA must not initialise before CUDA_VISIBLE_DEVICES names the leased devices
    with job_gpus(snakemake.resources.get("gpu", 0)) as job:
        from lidarlift.model.train import train_job

        train_job(spec, processes=job.processes)  # one DDP rank per leased device
