"""The host cluster: xvmd daemons on several hypervisors sharing where every VM is, over
corosync CPG."""
