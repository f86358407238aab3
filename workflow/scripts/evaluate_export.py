# Snakemake adapter: export one label source in the official formats (lidarlift.evaluate.run.export_source).
from pathlib import Path

from lidarlift.evaluate.run import export_source
from lidarlift.workflow import job_logging, write_json

with job_logging(snakemake.log[0], snakemake.threads):
    cfg = snakemake.params.evaluate
    layout = snakemake.params.layout
    formats = cfg.get("export", {}).get("formats", ["nuscenes", "semantickitti", "clusterlabel"])
    record = export_source(snakemake.input.manifest, {s: Path(p) for s, p in layout["stores"].items()}, layout["stage"],
                           snakemake.output.directory, formats, cfg)
    write_json(snakemake.output.record, {"kind": "export", "source": snakemake.wildcards.source,
                                         "directory": snakemake.output.directory, **record})
