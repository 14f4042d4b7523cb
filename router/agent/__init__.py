"""The self-fencing agent (``wa-router agent``) and the router's side of fencing.

``fence``: the agent's pure state machine; ``run``: its async layer; ``keys``: the Redis
keys both sides share; ``gate``: the leader's pure decision before moving an instance's
sessions; ``fencing``: the leader's async layer for that decision."""
