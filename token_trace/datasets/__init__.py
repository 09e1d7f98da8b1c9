"""Attribution over datasets: many prompts, on one machine or a Ray cluster, aggregated.

`run_dataset(prompts_file, out_dir, model=..., engine="local" | "ray")` attributes every record,
writes partitioned Parquet tables (node rows per prompt, one row per prompt, aggregates), resumes a
stopped run, records bad records instead of stopping, and writes an HTML report.

Modules: `inputs` (reading prompt files), `settings` (what a run computes), `layout` (the output
folder and atomic writes), `worker` (one shard -> its files), `engines` (local / Ray),
`aggregate` (across prompts), `report`, `run` (the entry point), `command` (the CLI subcommand).
The public names (`run_dataset`, `DatasetResult`, `DatasetSettings`, `read_prompts`) are exported
by `token_trace` itself. Nothing is imported here: Ray's aggregation tasks import `aggregate` alone,
without paying for torch and TransformerLens.
"""
