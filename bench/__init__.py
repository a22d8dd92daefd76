"""`python -m bench` (or `make bench`): the side-by-side comparisons of issue 7, in one process.

Each comparison module has `run(workdir: Path, dataset: Dataset) -> list[Row]`; `__main__` runs
them in turn, prints the table and writes bench/results.json.
"""
