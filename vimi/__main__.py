from vimi.cli import main

main()
