"""Studies: experiment points and their runs, result reports and plots, weight-statistics analysis. Imports the
algorithm and the bridge; only the CLI imports it."""
