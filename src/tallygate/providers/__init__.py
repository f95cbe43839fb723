"""Provider adapters. Each module here registers one provider; see ``registry``."""
