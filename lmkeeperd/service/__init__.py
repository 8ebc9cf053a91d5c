"""Running lmkeeperd as a service: systemd units, the launchd agent, and what
`lmkeeperd service install | uninstall | status` do (the commands themselves
are in cli/service.py).

    render.py   parameters -> unit and plist text (pure)
    target.py   this machine and user -> where the service lives and what it runs
    plan.py     what install/uninstall will do, as a printable Plan (reading only)
    execute.py  carrying out a Plan; checks of the manager and the user
    unit_status.py  whether the service is installed, enabled and running
"""
