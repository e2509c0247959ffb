"""Usage figures read from the rollups: totals, the API's reports, chart shapes."""
