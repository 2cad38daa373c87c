"""Look at outputs without writing them: stats, preview, leakage, verify."""
