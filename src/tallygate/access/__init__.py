"""Who may call and who pays: virtual keys, budgets, rate limits and the spend ledger."""
