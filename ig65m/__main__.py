from ig65m.cli import main

main()
