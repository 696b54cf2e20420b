"""Ember's own C++ kernels, for what torch's CPU ops do slowly at an encoder's shapes; each is a
torch op (eager, export) with an AOTInductor C shim (compiled graphs). Below the model layer:
model code calls them, the runner prepares them before it builds or loads a graph."""
