"""A PBX simulator speaking AMI as Asterisk 22 does, for the demo, tests and benchmarks.

``serve``/``run_simulator`` play a seeded mix of calls on a TCP AMI server; ``render_capture``
writes the same calls as raw AMI bytes. Pure: ``scenarios`` holds the kinds of call and the
generator (with callbacks after missed calls), ``customers`` the book of who calls, ``schedule``
the day's load curve and the merged event stream.
"""

from simulator.server import Rendered, Simulator, SimulatorConfig, render, render_capture, run_simulator, serve

__all__ = ["Rendered", "Simulator", "SimulatorConfig", "render", "render_capture", "run_simulator", "serve"]
