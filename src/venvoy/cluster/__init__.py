"""Batch schedulers: Slurm job scripts that call the runtime directly (``script``),
Slurm's own commands and their parsed output (``slurm``), the record of the jobs
venvoy submitted (``jobs``), and the submission itself (``submit``): the image is
prepared once on the submitting node, and the nodes run the runtime, not venvoy."""
