from treedrive.cli import main

main()
