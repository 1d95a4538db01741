"""Reports: tables and plots from result records, with no computation beyond summaries."""
