"""What a run leaves: results.json and its schema, the HTML report, comparison, Patchwork."""
