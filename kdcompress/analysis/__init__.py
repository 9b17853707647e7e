"""What consumes trained runs: ``bench`` (cost and speed), ``compare`` (which student and method to ship)
and the ``demo`` flow. Nothing below this package imports it."""
