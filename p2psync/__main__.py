from p2psync.cli.main import entrypoint

if __name__ == "__main__":
    entrypoint()
