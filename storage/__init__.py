"""PostgreSQL storage: every SQL statement billstream runs lives in this package."""
