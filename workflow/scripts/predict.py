# Snakemake adapter: predict every keyframe point of one shard with a trained network (lidarlift.model.predict).
from lidarlift.gpu import job_gpus
from lidarlift.workflow import job_logging, runtime_settings

with job_logging(snakemake.log[0], snakemake.threads):
    train = {**snakemake.params.train, **runtime_settings(snakemake, "train")}
    # lease first: CUDA must not initialise before CUDA_VISIBLE_DEVICES names the leased device
    with job_gpus(snakemake.resources.get("gpu", 0), use=1):
        from lidarlift.model.predict import predict_job

        predict_job(
            snakemake.input.model,
            snakemake.input.manifest,
            snakemake.wildcards.shard,
            snakemake.output.store,
            round="full" if snakemake.rule == "predict_full" else int(snakemake.wildcards.round),
            label_space=snakemake.params.labels["space"],
            metrics_path=snakemake.output.stats,
            model_config=train["model"],
            device=train["device"],
            batch_size=int(train["predict_batch_size"]),
            amp=bool(train["amp"]),
            threads=snakemake.threads,
        )
