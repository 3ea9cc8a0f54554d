from mllmft.train import main

main()
