# Makes checkov load the Python checks of this directory (it skips folders without one).
