"""Pure decision logic shared by the operator, the node agent and the simulator.

Every controller is a function (or small class) of observed state to decisions, each decision
carrying the reason it was taken. Nothing here performs I/O.
"""
