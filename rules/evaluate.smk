# Evaluation and the report: scores against ground truth, the nuScenes devkit cross-check, exports
# in the official formats, and the figures and tables of `snakemake --report report.html`.
from lidarlift.evaluate.plan import EvaluationPlan

EVAL = EvaluationPlan(config, SHARDS, ROUNDS, RESULTS, manifest_path())


# Score every production store of one shard against its ground truth (counts; lidarlift.evaluate.shard).
rule evaluate_shard:
    input:
        unpack(EVAL.shard_inputs),
    output:
        counts=f"{RESULTS}/evaluate/shards/{{shard}}.json",
    log:
        f"{RESULTS}/logs/evaluate/shards/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/shards/{{shard}}.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=3000,
    params:
        settings=eval_params(),
        stores=EVAL.shard_params,
    script:
        "../workflow/scripts/evaluate_shard.py"


# Merge the shards' counts into every quality figure; cross-check the final round with the devkit.
rule evaluate:
    input:
        unpack(EVAL.evaluate_inputs),
    output:
        metrics=f"{RESULTS}/evaluate/metrics.json",
        confusion=f"{RESULTS}/evaluate/confusion.npz",
        devkit=directory(f"{RESULTS}/evaluate/devkit"),
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        settings=eval_params(),
        eval_shards=EVAL.eval_shards,
        final_round=EVAL.final_round,
        devkit_stores=EVAL.devkit_stores(),
    script:
        "../workflow/scripts/evaluate.py"


# Export one label source in the nuScenes, SemanticKITTI and PointSAM/MixSup cluster-label formats.
rule export:
    input:
        unpack(EVAL.export_inputs),
    output:
        directory=directory(f"{RESULTS}/export/{{source}}"),
        record=f"{RESULTS}/export/{{source}}.json",
    log:
        f"{RESULTS}/logs/export/{{source}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export/{{source}}.tsv"
    wildcard_constraints:
        source=r"network|full|pseudolabels",
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        evaluate=stage_params("evaluate"),
        layout=EVAL.export_params,
    script:
        "../workflow/scripts/evaluate_export.py"


# Report tables and figures: headline, label quality, stage quality, confusion matrix, training curves.
rule report_tables:
    input:
        unpack(EVAL.tables_inputs),
    output:
        headline=report(
            f"{EVAL.report_dir}/headline.html",
            caption="../report/headline.rst",
            category="1. Headline",
        ),
        headline_png=report(
            f"{EVAL.report_dir}/headline.png",
            caption="../report/headline_figure.rst",
            category="1. Headline",
        ),
        label_quality=report(
            f"{EVAL.report_dir}/label_quality.html",
            caption="../report/label_quality.rst",
            category="2. Label quality",
        ),
        stage_quality=report(
            f"{EVAL.report_dir}/stage_quality.html",
            caption="../report/stage_quality.rst",
            category="3. Stage quality",
        ),
        stage_quality_png=report(
            f"{EVAL.report_dir}/stage_quality.png",
            caption="../report/stage_quality_figure.rst",
            category="3. Stage quality",
        ),
        confusion=report(
            f"{EVAL.report_dir}/confusion.png",
            caption="../report/confusion.rst",
            category="4. Network",
        ),
        training=report(
            f"{EVAL.report_dir}/training_curves.png",
            caption="../report/training_curves.rst",
            category="4. Network",
        ),
    log:
        f"{RESULTS}/logs/report/tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_tables.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../workflow/scripts/evaluate_tables.py"


# Camera overlays and bird's-eye views of one keyframe: pseudo-labels | prediction | ground truth.
rule report_sample:
    input:
        unpack(EVAL.sample_inputs),
    output:
        overlay=report(
            f"{EVAL.report_dir}/samples/{{shard}}_{{index}}_overlay.png",
            caption="../report/overlay.rst",
            category="5. Samples",
            subcategory="{shard}",
        ),
        bev=report(
            f"{EVAL.report_dir}/samples/{{shard}}_{{index}}_bev.png",
            caption="../report/bev.rst",
            category="5. Samples",
            subcategory="{shard}",
        ),
    log:
        f"{RESULTS}/logs/report/sample_{{shard}}_{{index}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_sample/{{shard}}_{{index}}.tsv"
    wildcard_constraints:
        index=r"\d+",
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        figures=EVAL.section.get("figures", {}),
        final_round=EVAL.final_round,
    script:
        "../workflow/scripts/evaluate_sample.py"


# The benchmark table: seconds and max RSS of every job, from each rule's benchmark: file.
rule report_benchmarks:
    input:
        EVAL.benchmark_inputs,
    output:
        table=report(
            f"{EVAL.report_dir}/benchmarks.html",
            caption="../report/benchmarks.rst",
            category="6. Benchmarks",
        ),
        figure=report(
            f"{EVAL.report_dir}/benchmarks.png",
            caption="../report/benchmarks_figure.rst",
            category="6. Benchmarks",
        ),
    log:
        f"{RESULTS}/logs/report/benchmarks.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_benchmarks.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        benchmarks=f"{RESULTS}/benchmarks",
    script:
        "../workflow/scripts/evaluate_benchmarks.py"


# Index of the report's files (each checked); `rule all` asks for it beside the summary.
rule report_index:
    input:
        files=EVAL.report_files(),
        benchmarks=[
            f"{EVAL.report_dir}/benchmarks.html",
            f"{EVAL.report_dir}/benchmarks.png",
        ],
    output:
        index=f"{EVAL.report_dir}/index.json",
    log:
        f"{RESULTS}/logs/report/index.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_index.tsv"
    conda:
        "../envs/lidarlift.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../workflow/scripts/evaluate_index.py"


# The run's scoreboard: the jobs' stats and the evaluation's figures merged (JSON only, no stage code).
rule summary:
    input:
        unpack(stats_inputs),
        unpack(EVAL.summary_inputs),
    output:
        summary=f"{RESULTS}/summary.json",
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        "../envs/lidarlift.yaml"
    script:
        "../workflow/scripts/summary.py"
