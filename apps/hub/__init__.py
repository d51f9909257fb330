"""The hub (a Tabby webserver behind the router): its supervised process and its snapshots, shared by the
local and Modal runtimes. Imports only fleet/ and apps/tabby.py."""
