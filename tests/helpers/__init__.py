"""Helpers shared by the test modules (no test module imports from another one): the Snakemake
runner and job-table parser, the shrunk configs of the three tracks, a reader for the report's
tables, and the small models the method tests build."""
