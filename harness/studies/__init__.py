"""Many runs: several seeds of one configuration, tuning studies, a plugin's declared ablations."""
