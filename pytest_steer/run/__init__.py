"""Running a suite: options, the session that computes and judges cases, devices, progress bars."""
