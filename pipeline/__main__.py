from secretscope.cli import main

main()
