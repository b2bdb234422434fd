"""The facts that several parts of campfleet must agree on, each in one place.

The Pulumi components render them into user data, the mux and the agent read them on the
hosts, `campfleet local` writes them on a laptop and the tests check them: host paths and file
names (`paths`), secret names and their SSM parameters (`secrets`), the ports between the mux
and the ships (`ports`), and the builders of the two settings files, mux.json (`muxjson`) and
agent.json (`agentjson`). Tag keys live in `campfleet.tags`; ship and container states and
their groups in `campfleet.protocol`.

Stdlib only: the ship agent imports these modules with the AMI's system Python.
"""
