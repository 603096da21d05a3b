"""What `launch.py --mode=...` runs besides a study: check, plan, predict, export."""
