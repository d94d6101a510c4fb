"""One record per check, and the matrix of cells with their expectations."""
