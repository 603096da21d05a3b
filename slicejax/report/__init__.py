"""The study report: result rows in; cells, paired statistics, findings and figures out."""
